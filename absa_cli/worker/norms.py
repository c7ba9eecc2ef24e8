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


class NormStep:
    """One step's BatchNorm running-statistics rule: every micro-batch updates from the step's starting values;
    ``sums`` collects the updated values for the all-reduce; ``apply`` sets the mean.

    On a GPU a step is often bound by how fast the host launches work, so the rule runs as a handful of multi-tensor
    operations whatever the number of BatchNorm layers: the starting values are one flat copy of the statistics and
    one of the counters, restoring them is a ``_foreach_copy_`` each, the sums one ``_foreach_add_``. With one
    micro-batch per rank (``micro_batches`` = 1) there is nothing to restore between micro-batches and the sum of one
    update is that update: ``sums`` are the statistics themselves (all-reduced in place) and ``apply`` divides them
    by the mean count, 1, and sets ``num_batches_tracked`` to its start + 1 — the same values as the general path,
    without its copies. The starting values are kept either way, so that a step that fails (a dead peer in the
    all-reduce) can ``restore`` them."""

    def __init__(self, norms: list[_BatchNorm], micro_batches: int = 2) -> None:
        self.norms = norms
        self.stats = [t for m in norms for t in (m.running_mean, m.running_var)]
        self.tracked = [m.num_batches_tracked for m in norms]
        self._start = (_flat_copy(self.stats), _flat_copy(self.tracked)) if norms else None
        self.single = micro_batches == 1
        self.sums = self.stats if self.single else _zeros_like(self.stats)
        self.count = 0

    @torch.no_grad()
    def before_forward(self) -> None:
        if self.count:  # the first micro-batch starts from the starting values already
            self.restore()

    @torch.no_grad()
    def after_forward(self) -> None:
        if not self.single and self.stats:
            torch._foreach_add_(self.sums, self.stats)
        self.count += 1

    @torch.no_grad()
    def apply(self, mean_count: torch.Tensor) -> None:
        """``sums`` and the count were both averaged over ranks: their ratio is the mean over micro-batches."""
        if not self.norms:
            return
        if self.single:
            torch._foreach_div_(self.stats, mean_count)
            # start + 1 as in the general path, also for a BatchNorm the forward ran twice or not at all
            torch._foreach_copy_(self.tracked, _split_like(self._start[1] + 1, self.tracked))
            return
        self.restore()
        torch._foreach_copy_(self.stats, torch._foreach_div(self.sums, mean_count))
        torch._foreach_add_(self.tracked, 1)

    @torch.no_grad()
    def restore(self) -> None:
        if self._start is None:
            return
        for buffers, flat in zip((self.stats, self.tracked), self._start):
            torch._foreach_copy_(buffers, _split_like(flat, buffers))


def _flat_copy(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The tensors' values, concatenated into one new 1-D tensor (one copy, whatever their number; mixed dtypes
    are promoted to a common one, which holds each exactly)."""
    return torch.cat([t.reshape(-1) for t in tensors])


def _split_like(flat: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Views of ``flat`` shaped like ``tensors`` (the inverse of ``_flat_copy``)."""
    return [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


def _zeros_like(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Zeros shaped like ``tensors``, as views of one allocation."""
    if len({(t.dtype, t.device) for t in tensors}) != 1:
        return [torch.zeros_like(t) for t in tensors]
    return _split_like(torch.zeros(sum(t.numel() for t in tensors), dtype=tensors[0].dtype,
                                   device=tensors[0].device), tensors)
