"""Batch-size, learning-rate and adversarial-fraction policies (layer 0: pure, no torch, no clock).

A policy *decides*; the controller *acts*. After every epoch the controller hands the policy an
``EpochMeasurements`` (the curvature probe's λ_max, if one ran) and gets back a frozen ``Decision``: the global
batch and the adversarial fraction for the next epoch, whether to probe at the end of it, and a one-line
``reason`` that names the config field behind the choice. ``lr(epoch_progress, updates)`` gives the LR of each step.

Policies (``policy.name``):

- ``absa``: ABS plus FGSM examples on a fraction of every micro-batch (docs/policy.md, PAPER.md).
- ``abs``: the same batch and LR behaviour, never adversarial.
- ``fixed``: small-batch SGD at ``batch.global_batch_size``; never probes.
- ``fixed-large``: ``policy.max_global_batch`` from the start with Goyal et al.'s gradual warm-up; never probes.

The ABS rule, per epoch (one ``observe`` call, so at most one growth per epoch):

1. the first probe's λ becomes λ_ref (it cannot grow the batch by itself);
2. a probe with λ ≤ λ_ref / ``policy.eig_ratio`` counts as a drop; ``policy.confirm`` drops in a row grow the
   batch by ``policy.growth`` and set λ_ref = λ (a probe without the drop resets the count; an epoch without a
   probe leaves it as it is);
3. otherwise, after ``policy.duration`` epochs without growth, grow anyway (λ_ref = λ if one was measured);
4. never beyond ``policy.max_global_batch``: a growth that would overshoot is clamped to it; at the cap probing
   stops and the adversarial fraction is 0;
5. the adversarial fraction starts at ``policy.adv_ratio``, is divided by ``policy.growth`` at each growth, and is
   0 once ceil(``policy.adv_stop_frac`` × epochs) epochs are done.

A non-finite λ (a diverged probe) is ignored, as if no probe had run.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Protocol

from absa_cli.config import OptimConfig, RunConfig
from absa_cli.geometry import scale_lr, steps_in_epoch
from absa_cli.schedule import lr_at

GOYAL_WARMUP_EPOCHS = 5.0  # fixed-large when optim.warmup_epochs is 0: Goyal et al. warm up over 5 epochs


@dataclass(frozen=True)
class EpochMeasurements:
    """What the controller measured in the epoch just completed."""

    epoch: int  # 1-based epoch just completed
    num_epochs: int  # epochs in the whole run
    eigenvalue: float | None = None  # λ_max of the probe at the end of this epoch; None when not probed
    updates: int | None = None  # optimizer steps done so far in the run (anchors the LR ramp after a growth)
    train_loss: float | None = None
    test_acc: float | None = None


@dataclass(frozen=True)
class Decision:
    """What to do in the next epoch, and why."""

    global_batch_size: int
    adv_ratio: float  # fraction of each micro-batch replaced by FGSM examples
    probe_next: bool  # run the curvature probe at the end of the next epoch
    grew: bool
    reason: str


@dataclass
class PolicyState:
    """Everything a policy needs to continue exactly; plain values only (checkpoints load with weights_only)."""

    name: str
    global_batch_size: int
    adv_ratio: float
    probe_next: bool
    eig_ref: float | None = None  # λ_ref; None until the first probe
    epochs_since_growth: int = 0
    num_confirming: int = 0  # consecutive probes showing the drop, towards policy.confirm
    num_growths: int = 0
    last_epoch: int = 0  # the last epoch observed (guards against two decisions for one epoch)
    ramp_start_update: int = 0  # the LR ramp after the last growth starts at this update ...
    ramp_start_factor: float = 1.0  # ... at this fraction of the new LR (1.0: no ramp)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicyState:
        fields = dataclasses.fields(cls)
        unknown = sorted(set(data) - {f.name for f in fields})
        missing = [f.name for f in fields if f.default is dataclasses.MISSING and f.name not in data]
        if unknown or missing:
            raise ValueError(f"policy state has unknown keys {unknown} / lacks keys {missing}; "
                             f"it was saved by another version of absa")
        state = cls(**data)
        state.global_batch_size = int(state.global_batch_size)
        state.adv_ratio = float(state.adv_ratio)
        state.eig_ref = None if state.eig_ref is None else float(state.eig_ref)
        state.ramp_start_factor = float(state.ramp_start_factor)
        return state


class Policy(Protocol):
    name: str
    state: PolicyState

    def initial(self) -> Decision: ...
    def observe(self, m: EpochMeasurements) -> Decision: ...
    def lr(self, epoch_progress: float, updates: int) -> float: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, data: dict[str, Any]) -> None: ...


def make_policy(config: RunConfig) -> Policy:
    name = config.policy.name
    if name in ("absa", "abs"):
        return AdaptivePolicy(config)
    if name == "fixed":
        return FixedPolicy(config)
    if name == "fixed-large":
        return FixedLargePolicy(config)
    raise ValueError(f"policy.name={name!r} is not a policy; choose absa, abs, fixed or fixed-large")


def adv_stop_epoch(adv_stop_frac: float, num_epochs: int) -> int:
    """Adversarial training runs in epochs 1..this (ceil, with a guard against 0.3 × 10 = 3.0000000000000004)."""
    return max(0, math.ceil(adv_stop_frac * num_epochs - 1e-9))


class _BasePolicy:
    def __init__(self, config: RunConfig, state: PolicyState) -> None:
        self.config = config
        self.name = config.policy.name
        self.state = state
        self._initial = PolicyState.from_dict(state.to_dict())

    def state_dict(self) -> dict[str, Any]:
        return self.state.to_dict()

    def load_state_dict(self, data: dict[str, Any]) -> None:
        state = PolicyState.from_dict(data)
        if state.name != self.name:
            raise ValueError(f"the checkpoint's policy state is for policy.name={state.name}, "
                             f"but this run has policy.name={self.name}")
        self.state = state

    def _check_epoch(self, m: EpochMeasurements) -> None:
        if m.epoch <= self.state.last_epoch:
            raise ValueError(f"epoch {m.epoch} observed after epoch {self.state.last_epoch}: one decision per epoch")
        self.state.last_epoch = m.epoch

    def _decision(self, grew: bool, reason: str) -> Decision:
        s = self.state
        return Decision(s.global_batch_size, s.adv_ratio, s.probe_next, grew, reason)


class FixedPolicy(_BasePolicy):
    """Small-batch SGD: ``batch.global_batch_size`` throughout, the optim schedule as configured."""

    batch_field = "batch.global_batch_size"

    def __init__(self, config: RunConfig) -> None:
        super().__init__(config, PolicyState(config.policy.name, self._batch(config), 0.0, False))

    @staticmethod
    def _batch(config: RunConfig) -> int:
        return config.batch.global_batch_size

    def initial(self) -> Decision:
        batch = self._initial.global_batch_size
        return Decision(batch, 0.0, False, False,
                        f"batch {batch} fixed ({self.batch_field}, policy.name={self.name}); never probes")

    def observe(self, m: EpochMeasurements) -> Decision:
        self._check_epoch(m)
        return self._decision(False, f"batch {self.state.global_batch_size} kept: policy.name={self.name} "
                                     f"trains at {self.batch_field} throughout")

    def lr(self, epoch_progress: float, updates: int) -> float:
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

    def lr(self, epoch_progress: float, updates: int) -> float:
        optim = self.config.optim
        no_warmup = dataclasses.replace(optim, warmup_epochs=0.0)
        lr = lr_at(no_warmup, self.state.global_batch_size, epoch_progress)  # scaled, step decay applied
        warmup = self.warmup_epochs()
        if epoch_progress < warmup:
            target = scale_lr(optim.lr, optim.ref_batch_size, self.state.global_batch_size, optim.lr_scaling)
            ramped = optim.lr + (target - optim.lr) * epoch_progress / warmup
            lr *= ramped / target
        return lr


class AdaptivePolicy(_BasePolicy):
    """ABS (``policy.name=abs``) and ABSA (``policy.name=absa``): grow the batch as the curvature drops."""

    def __init__(self, config: RunConfig) -> None:
        batch = config.batch.global_batch_size
        at_cap = batch >= config.policy.max_global_batch
        adversarial = config.policy.name == "absa" and not at_cap and \
            adv_stop_epoch(config.policy.adv_stop_frac, config.epochs) > 0
        adv_ratio = config.policy.adv_ratio if adversarial else 0.0
        super().__init__(config, PolicyState(config.policy.name, batch, adv_ratio, probe_next=not at_cap))

    def initial(self) -> Decision:
        s, p = self._initial, self.config.policy
        reason = f"start at batch {s.global_batch_size} (batch.global_batch_size)"
        if not s.probe_next:
            reason += f"; at the cap policy.max_global_batch={p.max_global_batch}: no probing"
        if self.name == "absa":
            reason += f"; adversarial fraction {s.adv_ratio:g}"
            reason += " (policy.adv_ratio)" if s.adv_ratio else \
                " (policy.adv_ratio, policy.adv_stop_frac, policy.max_global_batch)"
        return Decision(s.global_batch_size, s.adv_ratio, s.probe_next, False, reason)

    # ------------------------------------------------------------------------------------------- the rule

    def observe(self, m: EpochMeasurements) -> Decision:
        self._check_epoch(m)
        s, p = self.state, self.config.policy
        s.epochs_since_growth += 1
        old_batch, old_adv = s.global_batch_size, s.adv_ratio
        eig = m.eigenvalue if m.eigenvalue is not None and math.isfinite(m.eigenvalue) else None
        if old_batch >= p.max_global_batch:
            s.probe_next = False
            s.adv_ratio = 0.0
            return self._decision(False, f"batch {old_batch} kept: at the cap policy.max_global_batch="
                                         f"{p.max_global_batch}; probing stops")
        grow_reason, keep_reason = self._apply_rule(eig, m.eigenvalue)
        grew = grow_reason is not None
        parts = [grow_reason if grew else keep_reason]
        if grew:
            self._grow(eig, m.updates)
            new_batch = s.global_batch_size
            if new_batch < old_batch * p.growth:
                parts[0] += f" (clamped to the cap policy.max_global_batch={p.max_global_batch})"
            if new_batch >= p.max_global_batch:
                parts[0] += f"; at the cap policy.max_global_batch={p.max_global_batch}: probing stops"
                s.adv_ratio = 0.0
                if old_adv > 0:
                    parts.append(f"adversarial fraction 0 at the cap policy.max_global_batch={p.max_global_batch}")
            elif old_adv > 0:
                s.adv_ratio = old_adv / p.growth
                parts.append(f"adversarial fraction {old_adv:.3g}→{s.adv_ratio:.3g} (÷ policy.growth={p.growth})")
        stop = adv_stop_epoch(p.adv_stop_frac, m.num_epochs)
        if old_adv > 0 and s.adv_ratio > 0 and m.epoch >= stop:
            s.adv_ratio = 0.0
            parts = [parts[0], f"adversarial training off after {m.epoch} of {m.num_epochs} epochs "
                               f"(policy.adv_stop_frac={p.adv_stop_frac:g})"]
        return self._decision(grew, "; ".join(parts))

    def _apply_rule(self, eig: float | None, raw: float | None) -> tuple[str | None, str]:
        """(reason to grow, or None; reason to keep). Updates λ_ref on the first probe and the confirm count."""
        s, p = self.state, self.config.policy
        batch, target = s.global_batch_size, min(s.global_batch_size * p.growth, p.max_global_batch)
        waited = f"epoch {s.epochs_since_growth} of policy.duration={p.duration}"
        if eig is None:
            why = "not probed" if raw is None else f"λ_max {raw} ignored (not finite)"
            keep = f"batch {batch} kept: {why} ({waited})"
        elif s.eig_ref is None:
            s.eig_ref = eig
            keep = (f"batch {batch} kept: first probe sets λ_ref = λ_max {eig:.3g} "
                    f"(policy.eig_ratio={p.eig_ratio:g} applies from the next probe; {waited})")
        else:
            compared = f"λ_max {eig:.3g} {{}} λ_ref {s.eig_ref:.3g} / policy.eig_ratio={p.eig_ratio:g}"
            if eig <= s.eig_ref / p.eig_ratio:
                s.num_confirming += 1
                if s.num_confirming >= p.confirm:
                    confirmed = f" on {p.confirm} probes in a row (policy.confirm={p.confirm})" if p.confirm > 1 else ""
                    return f"batch {batch}→{target}: {compared.format('≤')}{confirmed}", ""
                keep = (f"batch {batch} kept: {compared.format('≤')} on {s.num_confirming} of "
                        f"policy.confirm={p.confirm} probes ({waited})")
            else:
                s.num_confirming = 0
                keep = f"batch {batch} kept: {compared.format('>')} ({waited})"
        if s.epochs_since_growth >= p.duration:
            return (f"batch {batch}→{target}: {s.epochs_since_growth} epochs without growth "
                    f"(policy.duration={p.duration})"), keep
        return None, keep

    def _grow(self, eig: float | None, updates: int | None) -> None:
        s, p, optim = self.state, self.config.policy, self.config.optim
        old_batch = s.global_batch_size
        new_batch = min(old_batch * p.growth, p.max_global_batch)
        if p.lr_ramp_steps > 0:
            if updates is None:
                raise ValueError("EpochMeasurements.updates is needed to anchor the LR ramp "
                                 f"(policy.lr_ramp_steps={p.lr_ramp_steps})")
            # Start from the LR actually in use (an unfinished earlier ramp included), so the LR is continuous.
            s.ramp_start_factor = self._ramp_factor(updates) * _scale_ratio(optim, old_batch, new_batch)
            s.ramp_start_update = updates
        s.global_batch_size = new_batch
        s.eig_ref = eig if eig is not None else s.eig_ref
        s.num_confirming = 0
        s.epochs_since_growth = 0
        s.num_growths += 1
        s.probe_next = new_batch < p.max_global_batch

    # ------------------------------------------------------------------------------------------- the LR

    def lr(self, epoch_progress: float, updates: int) -> float:
        """``lr_at`` at the current batch (scaling, step decay, optim warm-up), times the post-growth ramp."""
        return lr_at(self.config.optim, self.state.global_batch_size, epoch_progress) * self._ramp_factor(updates)

    def _ramp_factor(self, updates: int) -> float:
        """Linear from ``ramp_start_factor`` at the growth's first update to 1 after ``policy.lr_ramp_steps``."""
        s, steps = self.state, self.config.policy.lr_ramp_steps
        if steps <= 0 or s.ramp_start_factor == 1.0:
            return 1.0
        t = min(max((updates - s.ramp_start_update) / steps, 0.0), 1.0)
        return s.ramp_start_factor + (1.0 - s.ramp_start_factor) * t


def _scale_ratio(optim: OptimConfig, old_batch: int, new_batch: int) -> float:
    """LR(old batch) / LR(new batch) under ``optim.lr_scaling``."""
    return scale_lr(1.0, optim.ref_batch_size, old_batch, optim.lr_scaling) / \
        scale_lr(1.0, optim.ref_batch_size, new_batch, optim.lr_scaling)


# ---------------------------------------------------------------------------------------------- replay

def trajectory(config: RunConfig, eigenvalues: list[float | None],
               num_train_samples: int | None = None) -> list[Decision]:
    """Replay a scripted run: ``[initial(), decision after epoch 1, ...]`` (one more than ``eigenvalues``).

    ``eigenvalues[k]`` is the probe's λ at the end of epoch k+1; it is dropped (None) when the previous decision
    did not ask for a probe, as the controller would not have probed. ``num_train_samples`` lets the replay
    count updates (needed with ``policy.lr_ramp_steps`` > 0).
    """
    policy = make_policy(config)
    decisions = [policy.initial()]
    updates = 0
    for epoch, eig in enumerate(eigenvalues, start=1):
        previous = decisions[-1]
        if num_train_samples is not None:
            updates += steps_in_epoch(num_train_samples, previous.global_batch_size)
        m = EpochMeasurements(epoch, config.epochs, eig if previous.probe_next else None,
                              updates if num_train_samples is not None else None)
        decisions.append(policy.observe(m))
    return decisions


@dataclass(frozen=True)
class ScheduleBounds:
    """Per epoch (index 0 = epoch 1), the global batch in the two bounding cases of the ABS rule."""

    fastest: list[int]  # λ drops enough at every probe: growth as early as the rule allows
    slowest: list[int]  # λ never drops: growth only by the policy.duration fallback


def schedule_bounds(config: RunConfig) -> ScheduleBounds:
    """The batch-size envelope ``absa plan`` shows (fixed policies: both bounds are the constant batch)."""
    num_epochs = config.epochs
    falling = [1.0]
    for _ in range(num_epochs - 1):  # each probe exactly at the previous one / eig_ratio, as the rule computes it
        falling.append(falling[-1] / config.policy.eig_ratio)
    flat = [1.0] * num_epochs

    def batches(eigs: list[float | None]) -> list[int]:
        return [d.global_batch_size for d in trajectory(config, eigs)[:num_epochs]]

    return ScheduleBounds(fastest=batches(falling), slowest=batches(flat))
