"""The learning rate at a point of training (decide/: pure).

LR = optim.lr scaled from optim.ref_batch_size to the global batch (optim.lr_scaling), times
optim.decay_factor for every epoch in optim.decay_epochs already reached, times a linear warm-up factor
during the first optim.warmup_epochs epochs.
"""

from __future__ import annotations

from absa_cli.config import OptimConfig
from absa_cli.decide.geometry import scale_lr


def lr_at(optim: OptimConfig, global_batch_size: int, epoch_progress: float) -> float:
    """LR at ``epoch_progress`` (epochs completed, fractional: 2.5 = half-way through the third epoch)."""
    lr = scale_lr(optim.lr, optim.ref_batch_size, global_batch_size, optim.lr_scaling)
    decays = sum(1 for boundary in optim.decay_epochs if epoch_progress >= boundary)
    lr *= optim.decay_factor ** decays
    if epoch_progress < optim.warmup_epochs:
        start = optim.warmup_start_factor
        lr *= start + (1.0 - start) * epoch_progress / optim.warmup_epochs
    return lr
