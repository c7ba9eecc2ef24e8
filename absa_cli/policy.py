"""Batch-size, learning-rate and adversarial-fraction policies (layer 0: pure, no torch, no clock).

A policy *decides*; the controller *acts*. After every epoch the controller hands the policy an
``EpochMeasurements`` (the curvature probe's λ_max, if one ran) and gets back a frozen ``Decision``: the global
batch and the adversarial fraction for the next epoch, whether to probe at the end of it, and a one-line
``reason`` that names the config field behind the choice. ``lr(epoch_progress)`` gives the LR of each step.

Policies (``policy.name``):

- ``absa``: ABS plus FGSM examples on a fraction of every micro-batch (docs/policy.md, PAPER.md).
- ``abs``: the same batch and LR behaviour, never adversarial.
- ``fixed``: small-batch SGD at ``batch.global_batch_size``; never probes.
- ``fixed-large``: ``policy.max_global_batch`` from the start with Goyal et al.'s gradual warm-up; never probes.

The ABS rule, per epoch (one ``observe`` call, so at most one growth per epoch), as the authors' reference code
behaves (docs/policy.md states it with every difference):

1. the first finite probe's λ becomes λ_ref (it cannot grow the batch by itself);
2. a probe with λ ≤ λ_ref / ``policy.eig_ratio`` counts as a drop; ``policy.confirm`` drops in a row grow the
   batch by ``policy.growth`` (cause ``curvature``) and set λ_ref = λ (a probe without the drop resets the count;
   an epoch without a probe leaves it as it is);
3. otherwise, after ``policy.duration`` epochs without growth, grow anyway (cause ``fallback``): **λ_ref is left
   as it is**, so the next curvature growth still needs λ to halve from the last curvature-set reference;
4. never beyond ``policy.max_global_batch``: a growth that would overshoot is clamped to it; at the cap probing
   stops and the adversarial fraction is 0; after the last epoch nothing grows, and the last epoch is not probed
   (neither could change anything);
5. the adversarial fraction starts at ``policy.adv_ratio``, is divided by ``policy.growth`` at each growth, and is
   0 once floor(``policy.adv_stop_frac`` × epochs) epochs are done;
6. after a growth the LR ramps linearly from its value before the growth to the new one over
   ``policy.lr_ramp_epochs`` epochs (0: the reference's immediate jump).

A non-finite λ (a diverged probe) is ignored, as if no probe had run.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Protocol

from absa_cli.config import ConfigError, OptimConfig, RunConfig
from absa_cli.geometry import scale_lr
from absa_cli.schedule import lr_at

GOYAL_WARMUP_EPOCHS = 5.0  # fixed-large when optim.warmup_epochs is 0: Goyal et al. warm up over 5 epochs


@dataclass(frozen=True)
class EpochMeasurements:
    """What the controller measured in the epoch just completed."""

    epoch: int  # 1-based epoch just completed
    num_epochs: int  # epochs in the whole run
    eigenvalue: float | None = None  # λ_max of the probe at the end of this epoch; None when not probed
    train_loss: float | None = None
    test_acc: float | None = None


CURVATURE, FALLBACK = "curvature", "fallback"  # the two causes of a growth


@dataclass(frozen=True)
class Decision:
    """What to do in the next epoch, and why."""

    global_batch_size: int
    adv_ratio: float  # fraction of each base batch replaced by FGSM examples (adversarial.num_adversarial)
    probe_next: bool  # run the curvature probe at the end of the next epoch
    growth: str | None  # None: the batch is kept; CURVATURE or FALLBACK: why it grew
    reason: str
    # A curvature growth: how many epochs before the policy.duration fallback would have grown the batch (0: on
    # the epoch the fallback would have grown anyway)
    epochs_early: int = 0

    @property
    def grew(self) -> bool:
        return self.growth is not None


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
    ramp_start_epoch: float = 0.0  # the LR ramp after the last growth starts at this epoch boundary ...
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
        state.ramp_start_epoch = float(state.ramp_start_epoch)
        state.ramp_start_factor = float(state.ramp_start_factor)
        return state


class Policy(Protocol):
    name: str
    state: PolicyState

    def initial(self) -> Decision: ...
    def observe(self, m: EpochMeasurements) -> Decision: ...
    def lr(self, epoch_progress: float) -> float: ...
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


def check_batch_fits(config: RunConfig, num_train_samples: int) -> None:
    """``ConfigError`` if the largest global batch the policy can reach holds more samples than the training set:
    an epoch at that batch would apply no step at all (an epoch's tail is dropped, never a short step)."""
    fixed = config.policy.name == "fixed"
    largest = config.batch.global_batch_size if fixed else config.policy.max_global_batch
    field = "batch.global_batch_size" if fixed else "policy.max_global_batch"
    if largest > num_train_samples:
        raise ConfigError(f"{field}={largest} is larger than the {num_train_samples} training samples of "
                          f"{config.data.name}: no full global batch fits in an epoch; set {field} to at most "
                          f"{num_train_samples}")


def adv_stop_epoch(adv_stop_frac: float, num_epochs: int) -> int:
    """Adversarial training runs in epochs 1..this: floor(frac × epochs), as the reference (``epochs // 2`` for 0.5),
    with a guard against 0.3 × 10 = 3.0000000000000004 and 0.7 × 10 = 6.999999999999999."""
    return max(0, math.floor(adv_stop_frac * num_epochs + 1e-9))


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

    def _decision(self, growth: str | None, reason: str, epochs_early: int = 0) -> Decision:
        s = self.state
        return Decision(s.global_batch_size, s.adv_ratio, s.probe_next, growth, reason, epochs_early)


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


class AdaptivePolicy(_BasePolicy):
    """ABS (``policy.name=abs``) and ABSA (``policy.name=absa``): grow the batch as the curvature drops."""

    def __init__(self, config: RunConfig) -> None:
        batch = config.batch.global_batch_size
        at_cap = batch >= config.policy.max_global_batch
        adversarial = config.policy.name == "absa" and not at_cap and \
            adv_stop_epoch(config.policy.adv_stop_frac, config.epochs) > 0
        adv_ratio = config.policy.adv_ratio if adversarial else 0.0
        probe = not at_cap and config.epochs > 1  # a probe after the only epoch could change nothing
        super().__init__(config, PolicyState(config.policy.name, batch, adv_ratio, probe_next=probe))

    def initial(self) -> Decision:
        s, p = self._initial, self.config.policy
        reason = f"start at batch {s.global_batch_size} (batch.global_batch_size)"
        if s.global_batch_size >= p.max_global_batch:
            reason += f"; at the cap policy.max_global_batch={p.max_global_batch}: no probing"
        if self.name == "absa":
            reason += f"; adversarial fraction {s.adv_ratio:g}"
            reason += " (policy.adv_ratio)" if s.adv_ratio else \
                " (policy.adv_ratio, policy.adv_stop_frac, policy.max_global_batch)"
        return Decision(s.global_batch_size, s.adv_ratio, s.probe_next, None, reason)

    # ------------------------------------------------------------------------------------------- the rule

    def observe(self, m: EpochMeasurements) -> Decision:
        self._check_epoch(m)
        s = self.state
        if m.epoch >= m.num_epochs:  # nothing trains after this epoch: a growth would change nothing
            s.probe_next = False
            return self._decision(None, f"batch {s.global_batch_size} kept: the run ends after epoch {m.epoch} "
                                        f"(epochs={m.num_epochs})")
        decision = self._observe(m)
        if m.epoch + 1 >= m.num_epochs and s.probe_next:  # the last epoch's probe could change nothing either
            s.probe_next = False
            decision = dataclasses.replace(decision, probe_next=False)
        return decision

    def _observe(self, m: EpochMeasurements) -> Decision:
        s, p = self.state, self.config.policy
        s.epochs_since_growth += 1
        old_batch, old_adv = s.global_batch_size, s.adv_ratio
        eig = m.eigenvalue if m.eigenvalue is not None and math.isfinite(m.eigenvalue) else None
        if old_batch >= p.max_global_batch:
            s.probe_next = False
            s.adv_ratio = 0.0
            return self._decision(None, f"batch {old_batch} kept: at the cap policy.max_global_batch="
                                        f"{p.max_global_batch}; probing stops")
        waited = s.epochs_since_growth
        growth, reason = self._apply_rule(eig, m.eigenvalue)
        adversarial = ramp = ""
        if growth is not None:
            self._grow(m.epoch)
            new_batch = s.global_batch_size
            if new_batch < old_batch * p.growth:
                reason += f" (clamped to the cap policy.max_global_batch={p.max_global_batch})"
            if new_batch >= p.max_global_batch:
                reason += f"; at the cap policy.max_global_batch={p.max_global_batch}: probing stops"
                s.adv_ratio = 0.0
                if old_adv > 0:
                    adversarial = f"adversarial fraction 0 at the cap policy.max_global_batch={p.max_global_batch}"
            elif old_adv > 0:
                s.adv_ratio = old_adv / p.growth
                adversarial = f"adversarial fraction {old_adv:.3g}→{s.adv_ratio:.3g} (÷ policy.growth={p.growth})"
            if p.lr_ramp_epochs > 0:
                ramp = f"LR ramps to its new value over policy.lr_ramp_epochs={p.lr_ramp_epochs:g}"
        if old_adv > 0 and s.adv_ratio > 0 and m.epoch >= adv_stop_epoch(p.adv_stop_frac, m.num_epochs):
            s.adv_ratio = 0.0
            adversarial = (f"adversarial training off after {m.epoch} of {m.num_epochs} epochs "
                           f"(policy.adv_stop_frac={p.adv_stop_frac:g})")
        early = max(0, p.duration - waited) if growth == CURVATURE else 0
        return self._decision(growth, "; ".join(filter(None, [reason, adversarial, ramp])), early)

    def _apply_rule(self, eig: float | None, raw: float | None) -> tuple[str | None, str]:
        """(CURVATURE, FALLBACK or None; the reason). Sets λ_ref on the first probe and at a curvature growth only,
        and keeps the count of consecutive drops."""
        s, p = self.state, self.config.policy
        batch, target = s.global_batch_size, min(s.global_batch_size * p.growth, p.max_global_batch)
        waited = f"epoch {s.epochs_since_growth} of policy.duration={p.duration}"
        if eig is None:
            why = "not probed" if raw is None else f"λ_max {raw} ignored (not finite)"
            measured = why + ("" if s.eig_ref is None else f", λ_ref {s.eig_ref:.3g}")
        elif s.eig_ref is None:
            s.eig_ref = eig
            measured = (f"first probe sets λ_ref = λ_max {eig:.3g} "
                        f"(policy.eig_ratio={p.eig_ratio:g} applies from the next probe)")
        else:
            compared = f"λ_max {eig:.3g} {{}} λ_ref {s.eig_ref:.3g} / policy.eig_ratio={p.eig_ratio:g}"
            if eig <= s.eig_ref / p.eig_ratio:
                s.num_confirming += 1
                if s.num_confirming >= p.confirm:
                    confirmed = f" on {p.confirm} probes in a row (policy.confirm={p.confirm})" if p.confirm > 1 else ""
                    s.eig_ref = eig
                    return CURVATURE, f"batch {batch}→{target}: {compared.format('≤')}{confirmed}; λ_ref is now {eig:.3g}"
                measured = f"{compared.format('≤')} on {s.num_confirming} of policy.confirm={p.confirm} probes"
            else:
                s.num_confirming = 0
                measured = compared.format(">")
        if s.epochs_since_growth >= p.duration:
            kept = "" if s.eig_ref is None else f"; λ_ref {s.eig_ref:.3g} kept (a fallback growth leaves it)"
            return FALLBACK, (f"batch {batch}→{target}: {s.epochs_since_growth} epochs without growth "
                              f"(policy.duration={p.duration}); {measured}{kept}")
        return None, f"batch {batch} kept: {measured} ({waited})"

    def _grow(self, epoch: int) -> None:
        """Double (×policy.growth) the batch at the end of ``epoch``; λ_ref was already set by the rule."""
        s, p, optim = self.state, self.config.policy, self.config.optim
        old_batch = s.global_batch_size
        new_batch = min(old_batch * p.growth, p.max_global_batch)
        if p.lr_ramp_epochs > 0:
            # Start from the LR actually in use (an unfinished earlier ramp included), so the LR is continuous.
            s.ramp_start_factor = self._ramp_factor(float(epoch)) * _scale_ratio(optim, old_batch, new_batch)
            s.ramp_start_epoch = float(epoch)
        s.global_batch_size = new_batch
        s.num_confirming = 0
        s.epochs_since_growth = 0
        s.num_growths += 1
        s.probe_next = new_batch < p.max_global_batch

    # ------------------------------------------------------------------------------------------- the LR

    def lr(self, epoch_progress: float) -> float:
        """``lr_at`` at the current batch (scaling, step decay, optim warm-up), times the post-growth ramp."""
        return lr_at(self.config.optim, self.state.global_batch_size, epoch_progress) * self._ramp_factor(epoch_progress)

    def _ramp_factor(self, epoch_progress: float) -> float:
        """Linear from ``ramp_start_factor`` at the growth's epoch boundary to 1 after ``policy.lr_ramp_epochs``."""
        s, epochs = self.state, self.config.policy.lr_ramp_epochs
        if epochs <= 0 or s.ramp_start_factor == 1.0:
            return 1.0
        t = min(max((epoch_progress - s.ramp_start_epoch) / epochs, 0.0), 1.0)
        return s.ramp_start_factor + (1.0 - s.ramp_start_factor) * t


def _scale_ratio(optim: OptimConfig, old_batch: int, new_batch: int) -> float:
    """LR(old batch) / LR(new batch) under ``optim.lr_scaling``."""
    return scale_lr(1.0, optim.ref_batch_size, old_batch, optim.lr_scaling) / \
        scale_lr(1.0, optim.ref_batch_size, new_batch, optim.lr_scaling)


# ---------------------------------------------------------------------------------------------- replay

def trajectory(config: RunConfig, eigenvalues: list[float | None]) -> list[Decision]:
    """Replay a scripted run: ``[initial(), decision after epoch 1, ...]`` (one more than ``eigenvalues``).

    ``eigenvalues[k]`` is the probe's λ at the end of epoch k+1; it is dropped (None) when the previous decision
    did not ask for a probe, as the controller would not have probed.
    """
    policy = make_policy(config)
    decisions = [policy.initial()]
    for epoch, eig in enumerate(eigenvalues, start=1):
        previous = decisions[-1]
        decisions.append(policy.observe(EpochMeasurements(epoch, config.epochs, eig if previous.probe_next else None)))
    return decisions


@dataclass(frozen=True)
class ScheduleBounds:
    """Per epoch (index 0 = epoch 1), the global batch in the two bounding cases of the ABS rule, and the cause of
    the growth that led into the epoch (CURVATURE, FALLBACK, or None: the start or no growth)."""

    fastest: list[int]  # λ drops enough at every probe: growth as early as the rule allows
    slowest: list[int]  # λ never drops: growth only by the policy.duration fallback
    fastest_growths: list[str | None]
    slowest_growths: list[str | None]


def schedule_bounds(config: RunConfig) -> ScheduleBounds:
    """The batch-size envelope ``absa plan`` shows (fixed policies: both bounds are the constant batch)."""
    num_epochs = config.epochs
    falling = [1.0]
    for _ in range(num_epochs - 1):  # each probe exactly at the previous one / eig_ratio, as the rule computes it
        falling.append(falling[-1] / config.policy.eig_ratio)
    flat = [1.0] * num_epochs
    fastest, slowest = (trajectory(config, eigs)[:num_epochs] for eigs in (falling, flat))
    return ScheduleBounds(fastest=[d.global_batch_size for d in fastest], slowest=[d.global_batch_size for d in slowest],
                          fastest_growths=[d.growth for d in fastest], slowest_growths=[d.growth for d in slowest])
