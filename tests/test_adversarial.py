"""FGSM / PGD on normalised inputs, checked against exact answers.

On a linear model the input gradient of the summed cross-entropy is known in closed form, Wᵀ(softmax − onehot),
so FGSM must equal clamp(x_pix + ε·sign(g), 0, 1) in pixel space (CIFAR-10's mean/std, not the identity
normalisation). Also checked: ε = 0 is the identity; results stay in the pixel range; BatchNorm statistics, the
modules' train/eval modes and the parameters' .grad are left as they were; the FGSM count per base batch follows the
reference (max(⌊r·B₀⌋, 1) while r > 1/B₀, else none); the attacked positions depend on the position in the global
batch only, so any split into micro-batches attacks the same samples; mix_adversarial replaces exactly those; PGD stays in the ε-ball and raises the loss of a briefly trained model.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from absa_cli.worker.adversarial import adversarial_runs, fgsm, mix_adversarial, num_adversarial, pgd, robust_accuracy
from absa_cli.catalog import DATASETS

MEAN, STD = DATASETS["cifar10"].mean, DATASETS["cifar10"].std
SHAPE = (3, 4, 4)
NUM_CLASSES = 5


pytestmark = pytest.mark.usefixtures("one_thread")


def _stats(dtype=torch.float64):
    return (torch.tensor(MEAN, dtype=dtype).view(1, 3, 1, 1), torch.tensor(STD, dtype=dtype).view(1, 3, 1, 1))


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    mean, std = _stats(pixels.dtype)
    return (pixels - mean) / std


def to_pixels(inputs: torch.Tensor) -> torch.Tensor:
    mean, std = _stats(inputs.dtype)
    return inputs * std + mean


def linear_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, NUM_CLASSES)).double()


def batch(n: int = 8, seed: int = 1, low: float = 0.0, high: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    pixels = low + (high - low) * torch.rand((n, *SHAPE), generator=generator, dtype=torch.float64)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    return normalise(pixels), labels


def analytic_sign(model: nn.Sequential, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """sign(∇ₓ Σ CE) for logits = W·flat(x) + b: Wᵀ(softmax − onehot), reshaped to the input."""
    linear = model[1]
    with torch.no_grad():
        probs = torch.softmax(linear(inputs.flatten(1)), dim=1)
        grad = (probs - F.one_hot(labels, NUM_CLASSES).double()) @ linear.weight
    return grad.view_as(inputs).sign()


def test_fgsm_on_a_linear_model_is_eps_sign_gradient_in_pixel_space():
    model = linear_model()
    inputs, labels = batch(low=0.1, high=0.9)  # ε never reaches the range's ends here
    eps = 0.05
    adversarial = fgsm(model, inputs, labels, eps, MEAN, STD)
    expected = to_pixels(inputs) + eps * analytic_sign(model, inputs, labels)
    torch.testing.assert_close(to_pixels(adversarial), expected, rtol=0, atol=1e-12)
    assert not adversarial.requires_grad


def test_fgsm_clamps_to_the_pixel_range():
    model = linear_model()
    inputs, labels = batch(n=16, seed=2)
    pixels = to_pixels(inputs)
    pixels[:, :, 0, :] = 0.0  # rows on the range's ends and just inside: a step of ε would leave [0, 1]
    pixels[:, :, 1, :] = 1.0
    pixels[:, :, 2, :2] = 0.001
    pixels[:, :, 2, 2:] = 0.999
    inputs = normalise(pixels)
    eps = 0.05
    adversarial = to_pixels(fgsm(model, inputs, labels, eps, MEAN, STD))
    expected = (pixels + eps * analytic_sign(model, inputs, labels)).clamp(0.0, 1.0)
    torch.testing.assert_close(adversarial, expected, rtol=0, atol=1e-12)
    assert adversarial.min() >= -1e-12 and adversarial.max() <= 1 + 1e-12
    assert (expected == 0).any() and (expected == 1).any()  # some points were really pushed out and clamped


def test_fgsm_with_zero_eps_is_the_identity():
    model = linear_model()
    inputs, labels = batch()
    assert torch.equal(fgsm(model, inputs, labels, 0.0, MEAN, STD), inputs)
    assert torch.equal(pgd(model, inputs, labels, 0.0, 0.01, 5, MEAN, STD, seed=0), inputs)
    assert mix_adversarial(model, inputs, labels, [(0, 3)], 0.0, MEAN, STD) is inputs


def bn_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, NUM_CLASSES), nn.Dropout(0.5)).double()


def test_batchnorm_stats_modes_and_parameter_grads_are_untouched():
    model = bn_model()
    model.train()
    model[5].eval()  # a module the user froze in eval mode stays in eval mode
    inputs, labels = batch(n=8)
    model(inputs)  # some history in the running statistics
    buffers = {name: value.clone() for name, value in model.named_buffers()}
    for attack in (lambda: fgsm(model, inputs, labels, 0.01, MEAN, STD),
                   lambda: pgd(model, inputs, labels, 0.02, 0.01, 3, MEAN, STD, seed=0),
                   lambda: mix_adversarial(model, inputs, labels, [(0, 2), (5, 7)], 0.01, MEAN, STD)):
        attack()
        for name, value in model.named_buffers():
            assert torch.equal(value, buffers[name]), name
        assert [m.training for m in model] == [True, True, True, True, True, False]
        assert all(p.grad is None for p in model.parameters())


def test_existing_parameter_grads_are_not_modified():
    model = linear_model()
    inputs, labels = batch()
    F.cross_entropy(model(inputs), labels).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    fgsm(model, inputs, labels, 0.01, MEAN, STD)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))


def test_fgsm_runs_in_eval_mode():
    """With BatchNorm in eval mode each sample's perturbation depends on that sample only."""
    model = bn_model()
    model.train()
    inputs, labels = batch(n=8)
    whole = fgsm(model, inputs, labels, 0.01, MEAN, STD)
    halves = torch.cat([fgsm(model, inputs[:3], labels[:3], 0.01, MEAN, STD),
                        fgsm(model, inputs[3:], labels[3:], 0.01, MEAN, STD)])
    torch.testing.assert_close(whole, halves, rtol=0, atol=1e-12)


@pytest.mark.parametrize("ratio, block, k", [
    (0.2, 128, 25), (0.1, 128, 12), (0.05, 128, 6), (0.025, 128, 3),  # the reference's 0.2 halved per growth
    (0.0125, 128, 1),  # 1.6 samples: floor 1
    (0.00625, 128, 0), (1 / 128, 128, 0),  # one sample in 128 or less: none, as the reference's `> 1 / 128`
    (0.29, 100, 29), (0.0, 16, 0), (0.25, 10, 2)])
def test_num_adversarial_follows_the_reference(ratio, block, k):
    assert num_adversarial(ratio, block) == k


def test_adversarial_runs_depend_on_the_global_position_only():
    # 0.1 of each block of 16: the first 1 position (1.6 → 1) of every block
    assert adversarial_runs(0, 64, 0.1, 16) == [(0, 1), (16, 17), (32, 33), (48, 49)]
    assert adversarial_runs(0, 64, 0.2, 16) == [(0, 3), (16, 19), (32, 35), (48, 51)]
    # a micro-batch of positions 18–33 of the global batch: 18 (the third of block 16) and 32, 33 (block 32; its
    # third, 34, lies outside this micro-batch)
    assert adversarial_runs(18, 16, 0.2, 16) == [(0, 1), (14, 16)]
    assert adversarial_runs(1, 4, 0.2, 16) == [(0, 2)]  # positions 1, 2 of the first block
    assert adversarial_runs(0, 64, 0.05, 16) == []  # 0.8 of a sample per block: none
    # any split of a global batch of 96 (blocks of 32) attacks the same positions
    whole = {p for a, b in adversarial_runs(0, 96, 0.2, 32) for p in range(a, b)}
    for parts in ([48, 48], [32, 32, 32], [24, 24, 24, 24], [96], [40, 56]):
        start, attacked = 0, set()
        for size in parts:
            attacked |= {start + p for a, b in adversarial_runs(start, size, 0.2, 32) for p in range(a, b)}
            start += size
        assert attacked == whole == {p for block in (0, 32, 64) for p in range(block, block + 6)}, parts


def test_mix_adversarial_replaces_exactly_the_given_samples():
    model = linear_model()
    inputs, labels = batch(n=10, low=0.1, high=0.9)
    mixed = mix_adversarial(model, inputs, labels, [(0, 2), (5, 6)], 0.02, MEAN, STD)
    assert mixed.shape == inputs.shape
    changed = (mixed != inputs).flatten(1).any(dim=1)
    assert changed.tolist() == [True, True, False, False, False, True, False, False, False, False]
    attacked = fgsm(model, inputs, labels, 0.02, MEAN, STD)
    for i in (0, 1, 5):
        torch.testing.assert_close(mixed[i], attacked[i], rtol=0, atol=1e-12)
    assert torch.equal(mixed[2:5], inputs[2:5]) and torch.equal(mixed[6:], inputs[6:])
    assert mix_adversarial(model, inputs, labels, [], 0.02, MEAN, STD) is inputs


def trained_model_and_data() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A linear classifier fitted for a few steps on class-dependent pixel patterns."""
    generator = torch.Generator().manual_seed(3)
    prototypes = torch.rand((NUM_CLASSES, *SHAPE), generator=generator, dtype=torch.float64)
    labels = torch.randint(0, NUM_CLASSES, (64,), generator=generator)
    noise = 0.1 * torch.randn((64, *SHAPE), generator=generator, dtype=torch.float64)
    inputs = normalise((prototypes[labels] + noise).clamp(0, 1))
    model = linear_model(seed=4)
    for _ in range(50):  # plain gradient descent (torch.optim's first import alone takes about a second)
        grads = torch.autograd.grad(F.cross_entropy(model(inputs), labels), list(model.parameters()))
        with torch.no_grad():
            for param, grad in zip(model.parameters(), grads):
                param -= 0.05 * grad
    return model, inputs, labels


def test_pgd_stays_in_the_ball_and_range_and_raises_the_loss():
    model, inputs, labels = trained_model_and_data()
    eps = 0.03
    rng_before = torch.get_rng_state()
    adversarial = pgd(model, inputs, labels, eps, 0.01, 10, MEAN, STD, seed=0)
    assert torch.equal(torch.get_rng_state(), rng_before)  # a private generator for the random start
    delta = to_pixels(adversarial) - to_pixels(inputs)
    assert delta.abs().max() <= eps + 1e-9
    assert to_pixels(adversarial).min() >= -1e-9 and to_pixels(adversarial).max() <= 1 + 1e-9
    with torch.no_grad():
        clean_loss = F.cross_entropy(model(inputs), labels)
        pgd_loss = F.cross_entropy(model(adversarial), labels)
        fgsm_loss = F.cross_entropy(model(fgsm(model, inputs, labels, eps, MEAN, STD)), labels)
    assert pgd_loss > clean_loss and fgsm_loss > clean_loss
    assert torch.equal(adversarial, pgd(model, inputs, labels, eps, 0.01, 10, MEAN, STD, seed=0))
    no_start = pgd(model, inputs, labels, eps, eps, 1, MEAN, STD)  # one full step from the clean point is FGSM
    torch.testing.assert_close(no_start, fgsm(model, inputs, labels, eps, MEAN, STD), rtol=0, atol=1e-12)


def test_robust_accuracy():
    model, inputs, labels = trained_model_and_data()
    batches = [(inputs[:32], labels[:32]), (inputs[32:], labels[32:])]
    with torch.no_grad():
        clean = (model(inputs).argmax(1) == labels).double().mean().item()
    assert robust_accuracy(model, batches, 0.0, MEAN, STD) == pytest.approx(clean)
    assert robust_accuracy(model, batches, 0.5, MEAN, STD) < clean


@pytest.mark.parametrize("std", [(0.5, 0.0, 0.5), torch.tensor([0.5, -0.1, 0.5])])
def test_a_non_positive_std_is_refused(std):
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    inputs, labels = torch.zeros(2, 3, 4, 4), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="std must be positive per channel"):
        fgsm(model, inputs, labels, 0.01, (0.5, 0.5, 0.5), std)
