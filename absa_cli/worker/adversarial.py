"""Adversarial examples: FGSM for ABSA's training mix, PGD for robustness evaluation (worker/: torch).

Inputs are *normalised* ((x − mean) / std per channel); ε is in [0, 1] *pixel* units, as in the paper
(ε = 0.005). A pixel step ε·sign(g) is the normalised step (ε / std_c)·sign(g) — the sign is the same in both
spaces since std > 0 — and the valid pixel range [0, 1] is the normalised box [(0 − mean)/std, (1 − mean)/std].

Examples are generated with every module in eval mode (BatchNorm uses, and does not update, its running
statistics), each module's previous mode is restored afterwards, and gradients are taken with respect to the
inputs only (``torch.autograd.grad``), so no parameter's ``.grad`` is touched. The loss is summed over the batch
so that each sample's gradient does not shrink with the batch size (the sign is what matters).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from absa_cli.decide.policy import num_adversarial  # the count, pure: absa plan charges it too

Stats = Sequence[float] | torch.Tensor


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Every module in eval mode inside the block; each module's own previous mode restored after it."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _channel_view(values: Stats, like: torch.Tensor) -> torch.Tensor:
    """Per-channel statistics shaped (1, C, 1, ...) to broadcast over ``like`` (N, C, ...)."""
    if not isinstance(values, torch.Tensor):  # a dataset's tuple: made on the device once, not every micro-batch
        return _channel_constant(tuple(float(v) for v in values), like.dtype, like.device, like.dim())
    tensor = torch.as_tensor(values, dtype=like.dtype, device=like.device).reshape(-1)
    return tensor.reshape(1, -1, *([1] * (like.dim() - 2)))


@functools.lru_cache(maxsize=64)
def _channel_constant(values: tuple[float, ...], dtype: torch.dtype, device: torch.device, ndim: int) -> torch.Tensor:
    """Copying a Python tuple to a GPU is a blocking copy (the host waits for the stream); cached, it happens once."""
    return torch.tensor(values, dtype=dtype, device=device).reshape(1, -1, *([1] * (ndim - 2)))


def _bounds(inputs: torch.Tensor, mean: Stats, std: Stats) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(std, lower, upper) in normalised space for pixel range [0, 1]."""
    # Checked where the values live: a dataset's std is a tuple of floats, and testing the device copy instead
    # would make the host wait for the GPU at every adversarial micro-batch.
    checked = std if isinstance(std, torch.Tensor) and std.device.type != "cpu" else torch.as_tensor(std)
    if bool((checked <= 0).any()):
        raise ValueError(f"std must be positive per channel, got {checked.flatten().tolist()}")
    mean_t, std_t = _channel_view(mean, inputs), _channel_view(std, inputs)
    return std_t, (0.0 - mean_t) / std_t, (1.0 - mean_t) / std_t


def _clamp(x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    return torch.maximum(torch.minimum(x, upper), lower)


def input_gradient(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """∇ₓ of the summed cross-entropy at ``inputs``, without touching parameter gradients. Call in eval mode."""
    x = inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, eps_pixels: float,
         mean: Stats, std: Stats) -> torch.Tensor:
    """One signed-gradient step of ``eps_pixels`` in pixel space, clamped to [0, 1]; detached, normalised."""
    if eps_pixels < 0:
        raise ValueError(f"FGSM ε must be >= 0 (pixel units), got {eps_pixels}")
    if eps_pixels == 0 or inputs.shape[0] == 0:
        return inputs.detach().clone()
    std_t, lower, upper = _bounds(inputs, mean, std)
    with eval_mode(model):
        grad = input_gradient(model, inputs, labels)
    with torch.no_grad():
        return _clamp(inputs.detach() + (eps_pixels / std_t) * grad.sign(), lower, upper)


def pgd(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, eps_pixels: float, step_pixels: float,
        num_steps: int, mean: Stats, std: Stats, seed: int | None = None) -> torch.Tensor:
    """Projected gradient ascent in the L∞ ball of radius ``eps_pixels`` (pixel units), clamped to [0, 1].

    ``seed=None`` starts at the clean inputs (deterministic); a seed starts at a uniform random point of the
    ball drawn from a private generator (the global RNG is not touched).
    """
    if eps_pixels < 0 or step_pixels < 0 or num_steps < 0:
        raise ValueError(f"PGD needs ε, step >= 0 and num_steps >= 0; got {eps_pixels}, {step_pixels}, {num_steps}")
    clean = inputs.detach()
    if eps_pixels == 0 or (num_steps == 0 and seed is None) or clean.shape[0] == 0:
        return clean.clone()
    std_t, lower, upper = _bounds(clean, mean, std)
    radius = eps_pixels / std_t
    ball_lower, ball_upper = torch.maximum(clean - radius, lower), torch.minimum(clean + radius, upper)
    x = clean.clone()
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
        noise = torch.rand(clean.shape, generator=generator, dtype=clean.dtype) * 2 - 1
        x = _clamp(clean + noise.to(clean.device) * radius, ball_lower, ball_upper)
    with eval_mode(model):
        for _ in range(num_steps):
            grad = input_gradient(model, x, labels)
            with torch.no_grad():
                x = _clamp(x + (step_pixels / std_t) * grad.sign(), ball_lower, ball_upper)
    return x.detach()


def adversarial_runs(start: int, count: int, adv_ratio: float, block: int) -> list[tuple[int, int]]:
    """Which of the ``count`` samples at positions ``start, start + 1, ...`` of a global batch are replaced by FGSM
    examples, as ``[from, to)`` runs of indices into those ``count``: the first ``num_adversarial(adv_ratio, block)``
    positions of every block of ``block``. A function of the position only, so the same samples are attacked
    however the global batch is split into workers and micro-batches."""
    k = num_adversarial(adv_ratio, block)
    runs = []
    first_block = start - start % block
    for block_start in range(first_block, start + count, block):
        a, b = max(block_start, start), min(block_start + k, start + count)
        if a < b:
            runs.append((a - start, b - start))
    return runs


def mix_adversarial(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, runs: Sequence[tuple[int, int]],
                    eps_pixels: float, mean: Stats, std: Stats) -> torch.Tensor:
    """The micro-batch with the samples in ``runs`` (``[from, to)`` index ranges, ascending) replaced by their FGSM
    versions; slices and concatenations only, so no index tensor is copied to the device.

    With the model in eval mode each sample's gradient depends on that sample only, so attacking a subset alone
    equals attacking the whole batch and keeping the subset. Returns ``inputs`` itself when nothing changes.
    """
    if not runs or eps_pixels == 0:
        return inputs
    attacked = fgsm(model, torch.cat([inputs[a:b] for a, b in runs]), torch.cat([labels[a:b] for a, b in runs]),
                    eps_pixels, mean, std)
    pieces, position, used = [], 0, 0
    for a, b in runs:
        pieces += [inputs[position:a].detach(), attacked[used:used + b - a]]
        position, used = b, used + b - a
    pieces.append(inputs[position:].detach())
    return torch.cat(pieces, dim=0)


def robust_accuracy(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], eps_pixels: float,
                    mean: Stats, std: Stats) -> float:
    """Accuracy on FGSM examples (ε in pixel units) over ``batches`` of (normalised inputs, labels)."""
    num_correct = num_seen = 0
    for inputs, labels in batches:
        adversarial = fgsm(model, inputs, labels, eps_pixels, mean, std)
        with eval_mode(model), torch.no_grad():
            num_correct += int((model(adversarial).argmax(dim=1) == labels).sum())
        num_seen += labels.shape[0]
    return num_correct / max(num_seen, 1)
