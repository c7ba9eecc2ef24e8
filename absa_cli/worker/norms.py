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
    ``sums`` collects the updated values for the all-reduce; ``apply`` sets the mean."""

    def __init__(self, norms: list[_BatchNorm]) -> None:
        self.norms = norms
        self.start = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
        self.sums = [torch.zeros_like(t) for m in norms for t in (m.running_mean, m.running_var)]
        self.count = 0

    @torch.no_grad()
    def before_forward(self) -> None:
        if self.count:  # the first micro-batch starts from the starting values already
            self.restore()

    @torch.no_grad()
    def after_forward(self) -> None:
        for total, value in zip(self.sums, (t for m in self.norms for t in (m.running_mean, m.running_var))):
            total += value
        self.count += 1

    @torch.no_grad()
    def apply(self, mean_count: torch.Tensor) -> None:
        """``sums`` and the count were both averaged over ranks: their ratio is the mean over micro-batches."""
        if not self.norms:
            return
        self.restore()
        buffers = (t for m in self.norms for t in (m.running_mean, m.running_var))
        for buffer, total in zip(buffers, self.sums):
            buffer.copy_(total / mean_count)
        for module in self.norms:
            module.num_batches_tracked += 1

    @torch.no_grad()
    def restore(self) -> None:
        for module, (mean, var, tracked) in zip(self.norms, self.start):
            module.running_mean.copy_(mean)
            module.running_var.copy_(var)
            module.num_batches_tracked.copy_(tracked)
