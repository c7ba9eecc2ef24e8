"""The one Hessian-vector-product primitive (curvature/: torch and ``absa_cli.dist`` only).

``HessianOperator.matvec(v)`` returns ``H·v`` where ``H`` is the Hessian, with respect to the model's trainable
parameters, of the *mean loss over every sample held by every worker*. Power iteration, Lanczos, Hutchinson's trace
and the spectral density are all written against this operator alone, so a single-batch probe on one worker, a
many-batch probe with gradient accumulation and a probe sharded over eight workers are the same algorithm.

How ``H·v`` is computed: double back-propagation. ``g = ∇L`` is taken with ``create_graph=True``; then
``∂(g·v)/∂θ = H·v`` is a vector-Jacobian product of ``g`` with ``v`` (``autograd.grad(g, θ, grad_outputs=v)``), so
no scalar ``g·v`` node is built. On an H100 this beat torch.func forward-over-reverse for ResNet-20
(ANCHORS.md: 4.7× a gradient vs 12.0×), and it needs nothing from the model beyond ordinary autograd support.

Averaging: batch ``b`` of ``n_b`` samples contributes ``n_b · H_b`` and the total is divided by ``N``, the sample
count over all batches and all workers, so uneven batches and uneven shards still give the mean-loss Hessian. Each
worker pre-scales by ``W / N`` so that ``DistContext.all_reduce_mean`` (one collective on one flat buffer) yields the
exact mean; with ``LocalContext`` the collective is the identity.

BatchNorm in train mode over several workers: each worker holds a shard of every batch, but the loss of one process
over all the samples normalises with the statistics of the whole batch, and a shard's own statistics give another
Hessian (the 2-worker ``absa hessian --bn-mode train`` was 4.8% off in λ₁). So while the probe runs, batch-statistics
normalisation takes its per-channel mean and variance from sums all-reduced over the workers inside the autograd graph
(``DistContext.all_reduce_sum_autograd``), and both backward passes flow through those sums to every worker's samples.
A worker's loss then depends on the others' samples, so the batch weight ``n_b · W / N`` scales the loss before it is
differentiated (the backward all-reduce adds the workers' gradients, each already weighted) instead of scaling the
product after. Eval mode, and a single process, are untouched: their products are bit-identical to before.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from absa_cli.dist import DistContext, LocalContext

BN_MODES = ("eval", "train")

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class SymmetricOperator(Protocol):
    """What the eigenvalue, trace and density algorithms need: ``HessianOperator``, or a test's exact matrix."""

    dim: int
    dtype: torch.dtype
    device: torch.device
    names: list[str]  # one per block of the flat vector (parameter names)
    numels: list[int]  # block sizes, summing to dim
    hvp_count: int  # products so far

    def matvec(self, v: torch.Tensor) -> torch.Tensor: ...


@contextmanager
def probe_mode(model: nn.Module, bn_mode: str, ctx: DistContext | None = None) -> Iterator[None]:
    """Put ``model`` in the curvature probe's mode and restore every module's own flags afterwards.

    ``eval``: the whole model in eval mode — BatchNorm normalises with its running statistics and dropout is off, so
    ``H`` is a fixed matrix (the reference code's choice, and PyHessian's). ``train``: BatchNorm normalises with the
    batch's own statistics (the Hessian of the loss actually being trained); everything else stays in eval mode so
    dropout cannot make the operator random. Measuring curvature must not change the model, so in ``train`` mode
    BatchNorm also stops tracking running statistics for the duration: the forward pass then neither moves them nor
    saves them in the graph. (Copying saved values back afterwards would bump the buffers' versions and void a
    retained graph.) With ``ctx`` of several ranks, ``train`` mode's statistics are the whole batch's over every rank
    (``GlobalBatchStatistics``); the modules themselves are not patched.
    """
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
    flags = [(module, module.training) for module in model.modules()]
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    tracking = [m.track_running_stats for m in norms]
    model.eval()
    if bn_mode == "train":
        for module in norms:
            module.train()
            module.track_running_stats = False
    try:
        with ExitStack() as stack:
            if bn_mode == "train" and ctx is not None and ctx.world_size > 1:
                stack.enter_context(GlobalBatchStatistics(ctx))
            yield
    finally:
        for module, flag in flags:
            module.training = flag
        for module, flag in zip(norms, tracking):
            module.track_running_stats = flag


_BATCH_NORM = inspect.signature(F.batch_norm)


class GlobalBatchStatistics(TorchFunctionMode):
    """While active, ``F.batch_norm(..., training=True)`` — what a BatchNorm module in train mode calls — normalises
    with the mean and (biased) variance of the whole batch over every rank of ``ctx``, not of this rank's shard.

    Per channel, the sums of ``x`` and of ``(x - mean)²`` and the element count are all-reduced through
    ``ctx.all_reduce_sum_autograd``, so the gradient and its own gradient (a Hessian-vector product) reach every
    rank's samples. Two passes, not ``E[x²] - mean²``, which loses digits to cancellation in fp32. The statistics are
    computed in at least fp32 (the output has the input's dtype, as under autocast). Running statistics passed in are
    ignored: ``probe_mode`` stops tracking them. Intercepting the functional call at dispatch leaves the modules (and
    a compiled wrapper's guards on them) untouched. Every rank must run the same forward passes in the same order.
    """

    def __init__(self, ctx: DistContext) -> None:
        super().__init__()
        self.ctx = ctx

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.batch_norm:
            call = _BATCH_NORM.bind(*args, **kwargs)
            call.apply_defaults()
            if call.arguments["training"]:
                return self._normalise(call.arguments["input"], call.arguments["weight"], call.arguments["bias"],
                                       call.arguments["eps"])
        return func(*args, **kwargs)

    def _normalise(self, inputs: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                   eps: float) -> torch.Tensor:
        x = inputs.to(torch.promote_types(inputs.dtype, torch.float32))
        dims = [0, *range(2, x.dim())]  # all but the channels
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = x.new_tensor([x.numel() / x.shape[1]])
        totals = self.ctx.all_reduce_sum_autograd(torch.cat([x.sum(dims), count]))
        mean = totals[:-1] / totals[-1]
        centred = x - mean.view(shape)
        var = self.ctx.all_reduce_sum_autograd(centred.square().sum(dims)) / totals[-1]
        out = centred * torch.rsqrt(var + eps).view(shape)
        if weight is not None:
            out = out * weight.view(shape)
        if bias is not None:
            out = out + bias.view(shape)
        return out.to(inputs.dtype)


class HessianOperator:
    """``v ↦ H·v`` for the mean loss of ``model`` over ``batches`` on every rank of ``ctx``.

    ``batches`` holds ``(inputs, targets)`` pairs already on the model's device; ``loss_fn(model(inputs), targets)``
    must return the *mean* loss of that batch (as ``F.cross_entropy`` does); a batch's sample count is
    ``len(targets)``. Vectors are flat tensors of length ``dim`` in the parameters' dtype; ``split``/``flatten``
    convert to and from per-parameter tensors. Every rank must construct the operator and call ``matvec`` the same
    number of times (each call is a collective). Build a new operator after the weights change.

    ``reuse_graph``: keep each batch's first-backward graph and reuse it for every product instead of re-running
    forward and backward. Measured on this project's 2-core CPU machine (PyTorch 2.14, fp32, batch 32, best of 6
    interleaved runs): ResNet-20 0.46 s reused vs 1.13 s recomputed, C2 0.18 s vs 0.30 s — 1.6–2.4× faster, because
    a product then costs one backward-of-backward instead of forward + backward + backward-of-backward. Reusing is
    exact, not an approximation: the graph is that of the same weights and batch. The price is memory: one retained
    double-backward graph per batch (several times the activations). Default (``None``): reuse when there is a
    single batch — the in-training probe — and recompute when there are many, where the memory would add up.

    ``amp_dtype``: run the forward passes (and so the graphs differentiated twice) under autocast to this dtype,
    e.g. bf16 on a GPU (ANCHORS.md: up to 2.6× faster HVPs). Only the model's forward is autocast; vectors,
    products and the eigen-solvers' arithmetic stay in the parameters' dtype. Default: no autocast.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], ctx: DistContext | None = None,
                 *, bn_mode: str = "eval", params: Sequence[torch.Tensor] | None = None,
                 reuse_graph: bool | None = None, amp_dtype: torch.dtype | None = None) -> None:
        if bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
        if len(batches) == 0:
            raise ValueError("HessianOperator needs at least one batch")
        self.model = model
        self.loss_fn = loss_fn
        self.batches = list(batches)
        self.ctx = ctx or LocalContext()
        self.bn_mode = bn_mode
        self.names, self.params = _select_params(model, params)
        dtypes = {p.dtype for p in self.params}
        if len(dtypes) != 1:
            raise ValueError(f"all parameters must share one dtype, got {sorted(map(str, dtypes))}")
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        self.shapes = [p.shape for p in self.params]
        self.numels = [p.numel() for p in self.params]
        self.dim = sum(self.numels)
        self.reuse_graph = len(self.batches) == 1 if reuse_graph is None else reuse_graph
        self.amp_dtype = amp_dtype
        self.hvp_count = 0
        # BatchNorm statistics shared across ranks (module docstring): weight each loss before differentiating it
        self._weight_losses = bn_mode == "train" and self.ctx.world_size > 1
        self._graphs: dict[int, list[torch.Tensor]] = {}
        self._weights = self._batch_weights()

    def _batch_weights(self) -> list[float]:
        """``n_b · W / N`` per local batch: one ``all_reduce_sum`` of the sample count, once per operator."""
        counts = [int(targets.shape[0]) for _, targets in self.batches]
        total = torch.tensor([float(sum(counts))], dtype=torch.float64, device=self.device)
        self.ctx.all_reduce_sum([total])
        num_samples = float(total.item())
        if num_samples <= 0:
            raise ValueError("the batches hold no samples on any worker")
        return [n * self.ctx.world_size / num_samples for n in counts]

    # -------------------------------------------------------------------------------------------- vectors

    def split(self, v: torch.Tensor) -> list[torch.Tensor]:
        """Views of flat ``v``, one per parameter, shaped like the parameters."""
        return [block.view(shape) for block, shape in zip(torch.split(v, self.numels), self.shapes)]

    def flatten(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in tensors])

    def zeros(self) -> torch.Tensor:
        return torch.zeros(self.dim, dtype=self.dtype, device=self.device)

    # -------------------------------------------------------------------------------------------- product

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``H·v`` (flat), averaged over batches and workers; counts one HVP."""
        if v.shape != (self.dim,):
            raise ValueError(f"v must be a flat vector of length {self.dim}, got shape {tuple(v.shape)}")
        v = v.to(dtype=self.dtype, device=self.device)
        out = self.zeros()
        blocks = self.split(v)
        with probe_mode(self.model, self.bn_mode, self.ctx):
            for index, weight in enumerate(self._weights):
                grads = self._gradient(index)
                # Parameters whose gradient is constant (e.g. a purely linear term) have a zero Hessian row block.
                pairs = [(g, b) for g, b in zip(grads, blocks) if g.requires_grad]
                if not pairs:
                    continue
                outputs, vectors = zip(*pairs)
                products = torch.autograd.grad(outputs, self.params, grad_outputs=vectors,
                                               retain_graph=self.reuse_graph, allow_unused=True)
                out.add_(self.flatten([p if p is not None else torch.zeros_like(q)
                                       for p, q in zip(products, self.params)]),
                         alpha=1.0 if self._weight_losses else weight)
        self.ctx.all_reduce_mean([out])
        self.hvp_count += 1
        return out

    def _gradient(self, index: int) -> list[torch.Tensor]:
        """∇(mean loss of batch ``index``) with its graph, cached when ``reuse_graph``."""
        if index in self._graphs:
            return self._graphs[index]
        inputs, targets = self.batches[index]
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            loss = self.loss_fn(self.model(inputs), targets)
        if self._weight_losses:
            loss = loss * self._weights[index]
        grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, self.params)]
        if self.reuse_graph:
            self._graphs[index] = grads
        return grads

    def release(self) -> None:
        """Drop the retained graphs now rather than when the operator is garbage-collected."""
        self._graphs.clear()


def _select_params(model: nn.Module, params: Sequence[torch.Tensor] | None) -> tuple[list[str], list[torch.Tensor]]:
    """Names and tensors of the parameters ``H`` is taken over: all trainable ones unless ``params`` says."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if params is None:
        chosen = named
    else:
        by_id = {id(p): name for name, p in model.named_parameters()}
        chosen = [(by_id.get(id(p), f"param{i}"), p) for i, p in enumerate(params)]
    if not chosen:
        raise ValueError("the model has no trainable parameters to take a Hessian over")
    if not all(p.requires_grad for _, p in chosen):
        raise ValueError("every parameter of the Hessian must require grad")
    return [name for name, _ in chosen], [p for _, p in chosen]
