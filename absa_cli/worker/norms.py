"""BatchNorm running statistics that do not depend on how a global batch is split.

Each micro-batch's update starts from the step's starting statistics, the updated values are averaged over every
micro-batch of the global batch (in the same all-reduce as the gradients), and the step moves the statistics once.
With one worker and no accumulation that is exactly PyTorch's own update. Every worker therefore holds the same
statistics after every step, and a checkpoint taken mid-epoch is the same whoever wrote it.
"""

from __future__ import annotations

import torch
from torch.nn.modules.batchnorm import _BatchNorm


def tracked_norms(model: torch.nn.Module) -> list[_BatchNorm]:
    """The BatchNorm modules of ``model`` that keep running statistics."""
    return [m for m in model.modules()
            if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None]


class NormBuffers:
    """A model's BatchNorm statistics, and the buffers a step keeps beside them (its starting values, the sums of the
    micro-batches' updates), allocated once per model rather than once per step.

    On a GPU a step is often bound by how fast the host launches work, so everything a step does with them is a
    multi-tensor operation over these lists, whatever the number of BatchNorm layers: no per-step allocation,
    concatenation or per-tensor view."""

    def __init__(self, norms: list[_BatchNorm]) -> None:
        self.norms = norms
        self._bind(_statistics(norms), _counters(norms))

    def _bind(self, stats: list[torch.Tensor], tracked: list[torch.Tensor]) -> None:
        self.stats, self.tracked = stats, tracked
        self.start_stats, self.start_tracked = _zeros_like(stats), _zeros_like(tracked)
        self.sums = _zeros_like(stats)

    def refresh(self) -> None:
        """Follow the modules if their statistics are other tensors now (``model.to(...)``, ``.half()`` and
        ``load_state_dict(assign=True)`` replace buffers): one identity check per tensor, a rebuild if any moved."""
        stats, tracked = _statistics(self.norms), _counters(self.norms)
        if any(a is not b for a, b in zip(stats + tracked, self.stats + self.tracked)):
            self._bind(stats, tracked)


class NormStep:
    """One step's BatchNorm running-statistics rule: every micro-batch updates from the step's starting values;
    ``sums`` collects the updated values for the all-reduce; ``apply`` sets the mean.

    With one micro-batch per rank (``micro_batches`` = 1) there is nothing to restore between micro-batches and the
    sum of one update is that update: ``sums`` are the statistics themselves (all-reduced in place) and ``apply`` only
    sets ``num_batches_tracked`` to its start + 1 — the same values as the general path, without its copies. The
    starting values are kept either way, so that a step that fails (a dead peer in the all-reduce) can ``restore``
    them."""

    def __init__(self, buffers: NormBuffers, micro_batches: int = 2) -> None:
        buffers.refresh()
        self.buffers = buffers
        self.single = micro_batches == 1
        self.sums = buffers.stats if self.single else buffers.sums
        self.count = 0
        if buffers.norms:
            with torch.no_grad():
                torch._foreach_copy_(buffers.start_stats, buffers.stats)
                torch._foreach_copy_(buffers.start_tracked, buffers.tracked)
                if not self.single:
                    torch._foreach_zero_(buffers.sums)

    @torch.no_grad()
    def before_forward(self) -> None:
        if self.count:  # the first micro-batch starts from the starting values already
            self.restore()

    @torch.no_grad()
    def after_forward(self) -> None:
        if not self.single and self.buffers.stats:
            torch._foreach_add_(self.sums, self.buffers.stats)
        self.count += 1

    @torch.no_grad()
    def apply(self) -> None:
        """``sums`` were averaged over ranks, every rank ran ``count`` micro-batches (the batch geometry gives each
        the same number): sums / count is the mean over the global batch's micro-batches."""
        buffers = self.buffers
        if not buffers.norms:
            return
        if not self.single:
            torch._foreach_div_(self.sums, float(self.count))
            torch._foreach_copy_(buffers.stats, self.sums)
        # start + 1 on both paths, also for a BatchNorm the forward ran twice or not at all
        torch._foreach_copy_(buffers.tracked, buffers.start_tracked)
        torch._foreach_add_(buffers.tracked, 1)

    @torch.no_grad()
    def restore(self) -> None:
        buffers = self.buffers
        if buffers.norms:
            torch._foreach_copy_(buffers.stats, buffers.start_stats)
            torch._foreach_copy_(buffers.tracked, buffers.start_tracked)


def _statistics(norms: list[_BatchNorm]) -> list[torch.Tensor]:
    return [t for m in norms for t in (m.running_mean, m.running_var)]


def _counters(norms: list[_BatchNorm]) -> list[torch.Tensor]:
    return [m.num_batches_tracked for m in norms]


def _zeros_like(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Zeros shaped like ``tensors``, as views of one allocation where they share a dtype and device."""
    if len({(t.dtype, t.device) for t in tensors}) != 1:
        return [torch.zeros_like(t) for t in tensors]
    flat = torch.zeros(sum(t.numel() for t in tensors), dtype=tensors[0].dtype, device=tensors[0].device)
    return [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)]
