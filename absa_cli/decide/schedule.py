"""The learning rate at a point of training (decide/: pure).

LR = optim.lr scaled from optim.ref_batch_size to the global batch (optim.lr_scaling), times
optim.decay_factor for every epoch in optim.decay_epochs already reached, times a linear warm-up factor
during the first optim.warmup_epochs epochs.
"""

from __future__ import annotations

from absa_cli.config import OptimConfig
from absa_cli.decide.geometry import scale_lr
from absa_cli.errors import counted


def lr_at(optim: OptimConfig, global_batch_size: int, epoch_progress: float) -> float:
    """LR at ``epoch_progress`` (epochs completed, fractional: 2.5 = half-way through the third epoch)."""
    lr = scale_lr(optim.lr, optim.ref_batch_size, global_batch_size, optim.lr_scaling)
    decays = sum(1 for boundary in optim.decay_epochs if epoch_progress >= boundary)
    lr *= optim.decay_factor ** decays
    if epoch_progress < optim.warmup_epochs:
        start = optim.warmup_start_factor
        lr *= start + (1.0 - start) * epoch_progress / optim.warmup_epochs
    return lr


def schedule_notes(optim: OptimConfig, epochs: int) -> list[str]:
    """Not errors, but worth knowing before a run starts: LR decays, or a warm-up, that its epochs never reach (a
    preset shortened with ``epochs=`` keeps the decays of its full length)."""
    notes = []
    unreached = [decay for decay in optim.decay_epochs if decay >= epochs]
    if unreached:
        many = len(unreached) > 1
        shown = f"s {', '.join(map(str, unreached[:-1]))} and {unreached[-1]}" if many else f" {unreached[0]}"
        notes.append(f"note: the LR decay{'s' if many else ''} after epoch{shown} (optim.decay_epochs="
                     f"{list(optim.decay_epochs)}) never come{'' if many else 's'} in {counted(epochs, 'epoch')}; set "
                     f"optim.decay_epochs for a shorter run")
    if optim.warmup_epochs > epochs:
        notes.append(f"note: optim.warmup_epochs={optim.warmup_epochs:g} is longer than the run "
                     f"({counted(epochs, 'epoch')}): the LR never reaches its full value")
    return notes
