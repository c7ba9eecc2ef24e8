"""The baselines: ``fixed`` (small-batch SGD) and ``fixed-large`` (Goyal et al.'s large batch with warm-up).

Neither probes nor grows; both train at one batch throughout and follow the optim schedule.
"""

from __future__ import annotations

import dataclasses

from absa_cli.config import RunConfig
from absa_cli.decide.geometry import scale_lr
from absa_cli.decide.policy import BasePolicy, Decision, EpochMeasurements, PolicyState
from absa_cli.decide.schedule import lr_at

GOYAL_WARMUP_EPOCHS = 5.0  # fixed-large when optim.warmup_epochs is 0: Goyal et al. warm up over 5 epochs


class FixedPolicy(BasePolicy):
    """Small-batch SGD: ``batch.global_batch_size`` throughout, the optim schedule as configured."""

    batch_field = "batch.global_batch_size"

    def __init__(self, config: RunConfig) -> None:
        super().__init__(config, PolicyState(config.policy.name, self._batch(config), 0.0, False))

    @staticmethod
    def _batch(config: RunConfig) -> int:
        return config.batch.global_batch_size

    def initial(self) -> Decision:
        batch = self._initial.global_batch_size
        return Decision(batch, 0.0, False, None,
                        f"batch {batch} fixed ({self.batch_field}, policy.name={self.name}); never probes")

    def observe(self, m: EpochMeasurements) -> Decision:
        self._check_epoch(m)
        return self._decision(None, f"batch {self.state.global_batch_size} kept: policy.name={self.name} "
                                    f"trains at {self.batch_field} throughout")

    def lr(self, epoch_progress: float) -> float:
        return lr_at(self.config.optim, self.state.global_batch_size, epoch_progress)


class FixedLargePolicy(FixedPolicy):
    """Goyal et al.: ``policy.max_global_batch`` from the start; the LR ramps linearly from ``optim.lr`` (its value at
    ``optim.ref_batch_size``) to the scaled LR over ``optim.warmup_epochs`` epochs (5 when that is 0, as Goyal et al.);
    step decay on top. ``optim.warmup_start_factor`` does not apply: the ramp starts at the unscaled LR."""

    batch_field = "policy.max_global_batch"

    @staticmethod
    def _batch(config: RunConfig) -> int:
        return config.policy.max_global_batch

    def warmup_epochs(self) -> float:
        return self.config.optim.warmup_epochs or GOYAL_WARMUP_EPOCHS

    def initial(self) -> Decision:
        d = super().initial()
        optim = self.config.optim
        source = f"optim.warmup_epochs={optim.warmup_epochs:g}" + (" → 5, as Goyal et al." if
                                                                   not optim.warmup_epochs else "")
        return dataclasses.replace(d, reason=f"{d.reason}; LR warm-up from optim.lr={optim.lr:g} over "
                                              f"{self.warmup_epochs():g} epochs ({source})")

    def lr(self, epoch_progress: float) -> float:
        optim = self.config.optim
        no_warmup = dataclasses.replace(optim, warmup_epochs=0.0)
        lr = lr_at(no_warmup, self.state.global_batch_size, epoch_progress)  # scaled, step decay applied
        warmup = self.warmup_epochs()
        if epoch_progress < warmup:
            target = scale_lr(optim.lr, optim.ref_batch_size, self.state.global_batch_size, optim.lr_scaling)
            ramped = optim.lr + (target - optim.lr) * epoch_progress / warmup
            lr *= ramped / target
        return lr
