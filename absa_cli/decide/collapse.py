"""Whether a run has collapsed without a NaN (decide/: pure, no torch, no IO).

A NaN or infinite loss is caught after every chunk of steps (``driver/outcome.py``, ``check_finite``). Too high an
LR can instead blow the weights up to finite values: the loss jumps to millions, the network dies (its output no
longer depends on the input) and the run would train on at chance to its last epoch. Two signs, checked after
every epoch's evaluation, each stated relative to the number of classes C — chance accuracy 1/C, and ln C, the
loss of predicting every class alike, which is where every run starts — and to the run's own best accuracy:

1. **the loss blew up**: the epoch's mean training loss is above ``LOSS_FACTOR`` (2) × ln C. A healthy run's loss
   only falls from about ln C (measured first epochs: 0.93–1.01 × ln C, FGSM samples included), so twice that
   is far above its level at any point; it needs no history, so it also holds in the first epoch;
2. **back at chance**: the test accuracy is below ``CHANCE_FACTOR`` (1.5) / C, the epoch's mean training loss is at
   least ln C (no better than a uniform prediction: the model has unlearned, not only dipped), and an earlier epoch
   reached ``WELL_ABOVE_FACTOR`` (3) / C. A healthy dip — a quickstart run's test accuracy fell from 0.89 to 0.72
   in the epoch after a growth, its test loss tripled, while its training loss kept falling — is nowhere near
   either bound. A run that never got well above chance (a slow start, a tiny test set) is never called collapsed
   by this sign: near chance its test accuracy is noise.

A NaN loss is divergence's, decided before this runs: every comparison with it is false here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LOSS_FACTOR = 2.0  # the loss blew up: the epoch's mean training loss > LOSS_FACTOR × ln C
CHANCE_FACTOR = 1.5  # at chance: test accuracy < CHANCE_FACTOR / C ...
WELL_ABOVE_FACTOR = 3.0  # ... after an earlier epoch reached WELL_ABOVE_FACTOR / C

LOSS, CHANCE = "loss", "chance"  # the two signs


@dataclass(frozen=True)
class Collapse:
    """A collapsed epoch: which sign (``LOSS`` or ``CHANCE``) and what it measured, in words."""

    sign: str
    what: str


def check_collapse(num_classes: int, train_loss: float, test_acc: float, best_test_acc: float) -> Collapse | None:
    """The collapse an epoch shows (None: none). ``train_loss``: the epoch's mean per sample; ``test_acc``: its
    evaluation; ``best_test_acc``: the best of the epochs before it (0 before the first)."""
    uniform = math.log(num_classes)
    if train_loss > LOSS_FACTOR * uniform:
        return Collapse(LOSS, f"the training loss averaged {train_loss:.4g} over the epoch, more than "
                              f"{LOSS_FACTOR:g} × ln {num_classes} = {LOSS_FACTOR * uniform:.3g} (ln C: the loss of "
                              f"predicting every class alike)")
    at_chance, well_above = CHANCE_FACTOR / num_classes, WELL_ABOVE_FACTOR / num_classes
    if test_acc < at_chance and train_loss >= uniform and best_test_acc >= well_above:
        return Collapse(CHANCE, f"the test accuracy fell to {test_acc:.4g}, at chance (below {CHANCE_FACTOR:g} / "
                                f"{num_classes} classes = {at_chance:.3g}) after a best of {best_test_acc:.4g}, "
                                f"with a training loss of {train_loss:.4g}, no lower than ln {num_classes} = "
                                f"{uniform:.3g} (predicting every class alike)")
    return None
