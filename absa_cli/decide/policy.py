"""Batch-size, learning-rate and adversarial-fraction policies (decide/: pure, no torch, no clock).

A policy *decides*; the controller *acts*. After every epoch the controller hands the policy an
``EpochMeasurements`` (the curvature probe's λ_max, if one ran) and gets back a frozen ``Decision``: the global
batch and the adversarial fraction for the next epoch, whether to probe at the end of it, and a one-line
``reason`` that names the config field behind the choice. ``lr(epoch_progress)`` gives the LR of each step.

Policies (``policy.name``): ``absa`` and ``abs`` in ``decide/abs.py`` (the ABS rule, with and without FGSM),
``fixed`` and ``fixed-large`` in ``decide/baselines.py``; ``decide/replay.py`` replays one on scripted λ sequences.
This module holds what they share: the measurements, the decision, the saved state, and what a config allows.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Protocol

from absa_cli.config import ConfigError, RunConfig

ADAPTIVE_POLICIES = ("absa", "abs")  # the policies the curvature probe steers; the others never probe


@dataclass(frozen=True)
class EpochMeasurements:
    """What the controller measured in the epoch just completed."""

    epoch: int  # 1-based epoch just completed
    num_epochs: int  # epochs in the whole run
    eigenvalue: float | None = None  # λ_max of the probe at the end of this epoch; None when not probed
    rechecks: tuple[float, ...] = ()  # λ_max of the probe's rechecks (policy.recheck), in the order they ran
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
    def next_global_batch(self) -> int | None: ...
    def wants_recheck(self, readings: list[float]) -> bool: ...
    def lr(self, epoch_progress: float) -> float: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, data: dict[str, Any]) -> None: ...


def make_policy(config: RunConfig) -> Policy:
    from absa_cli.decide.abs import AdaptivePolicy  # the policies import this module's types
    from absa_cli.decide.baselines import FixedLargePolicy, FixedPolicy

    name = config.policy.name
    if name in ADAPTIVE_POLICIES:
        return AdaptivePolicy(config)
    if name == "fixed":
        return FixedPolicy(config)
    if name == "fixed-large":
        return FixedLargePolicy(config)
    raise ValueError(f"policy.name={name!r} is not a policy; choose absa, abs, fixed or fixed-large")


def reachable_batches(config: RunConfig) -> list[int]:
    """Every global batch the policy can train at, smallest first."""
    p = config.policy
    if p.name == "fixed":
        return [config.batch.global_batch_size]
    if p.name == "fixed-large":
        return [p.max_global_batch]
    batches = [config.batch.global_batch_size]
    while batches[-1] < p.max_global_batch:
        batches.append(min(batches[-1] * p.growth, p.max_global_batch))
    return batches


def check_batch_fits(config: RunConfig, num_train_samples: int) -> None:
    """``ConfigError`` if the largest global batch the policy can reach holds more samples than the training set:
    an epoch at that batch would apply no step at all (an epoch's tail is dropped, never a short step)."""
    largest = reachable_batches(config)[-1]
    field = "batch.global_batch_size" if config.policy.name == "fixed" else "policy.max_global_batch"
    if largest <= num_train_samples:
        return
    first = config.batch.global_batch_size
    if field != "batch.global_batch_size" and first > num_train_samples:  # the cap alone cannot go below the start
        fix = (f"set batch.global_batch_size and policy.max_global_batch to at most {num_train_samples}"
               if num_train_samples else "give it training samples")
        raise ConfigError(f"even the first global batch, batch.global_batch_size={first}, is larger than the "
                          f"{num_train_samples:,} training samples of {config.data.name}; {fix}")
    raise ConfigError(f"{field}={largest} is larger than the {num_train_samples:,} training samples of "
                      f"{config.data.name}: no full global batch fits in an epoch; set {field} to at most "
                      f"{num_train_samples}")


def training_set_notes(config: RunConfig, num_train_samples: int, threshold: float = 0.1) -> list[str]:
    """Not errors, but worth knowing before the run: a ``data.train_size`` above what the split holds (all of it is
    used), and one note per batch of the schedule whose epoch drops more than ``threshold`` of the training set (the
    tail that does not fill a global batch)."""
    notes = []
    if config.data.train_size > num_train_samples:
        notes.append(f"note: data.train_size={config.data.train_size} is more than the {num_train_samples:,} "
                     f"samples {config.data.name}'s {config.data.train_split} split holds: all {num_train_samples:,} "
                     f"are used")
    probed = config.probe.batch_size * config.probe.num_batches
    if config.policy.name in ADAPTIVE_POLICIES and probed > num_train_samples:
        notes.append(f"note: the curvature probe asks for probe.batch_size × probe.num_batches = {probed:,} samples, "
                     f"more than the {num_train_samples:,} training samples: it reads all {num_train_samples:,}")
    for batch in reachable_batches(config):
        dropped = num_train_samples % batch
        if dropped > threshold * num_train_samples:
            notes.append(f"note: at global batch {batch} every epoch drops {dropped:,} of the {num_train_samples:,} "
                         f"training samples ({100 * dropped / num_train_samples:.0f}%: the tail that does not fill a "
                         f"batch; a new permutation each epoch picks other ones)")
    return notes


def adv_stop_epoch(adv_stop_frac: float, num_epochs: int) -> int:
    """Adversarial training runs in epochs 1..this: floor(frac × epochs), as the reference (``epochs // 2`` for 0.5),
    with a guard against 0.3 × 10 = 3.0000000000000004 and 0.7 × 10 = 6.999999999999999."""
    return max(0, math.floor(adv_stop_frac * num_epochs + 1e-9))


def num_adversarial(adv_ratio: float, block: int) -> int:
    """FGSM samples in each block of ``block`` samples, as the reference implementation counts them in each of its
    128-sample micro-batches: none once the fraction is one sample in ``block`` or less, else
    max(floor(adv_ratio × block), 1). Guarded against 0.29 × 100 = 28.999999999999996."""
    if adv_ratio * block <= 1 + 1e-9:
        return 0
    return min(block, math.floor(adv_ratio * block + 1e-9))  # ≥ 1 here: the reference's max(·, 1) never binds


def attacked_share(config: RunConfig, epoch: int, global_batch_size: int) -> float:
    """The share of epoch ``epoch``'s (1-based) training samples that ``absa`` replaces by FGSM examples when it
    trains that epoch at ``global_batch_size``: the fraction starts at ``policy.adv_ratio`` at the first batch and is
    divided by ``policy.growth`` at each growth (so it is ``adv_ratio`` × first batch / batch), 0 at the cap and
    after the first ``adv_stop_epoch`` epochs, counted per block of ``batch.global_batch_size`` positions."""
    p, first = config.policy, config.batch.global_batch_size
    if p.name != "absa" or global_batch_size >= p.max_global_batch or epoch > adv_stop_epoch(p.adv_stop_frac,
                                                                                              config.epochs):
        return 0.0
    return num_adversarial(p.adv_ratio * first / global_batch_size, first) / first


class BasePolicy:
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

    def next_global_batch(self) -> int | None:
        """The batch the policy may grow to at the end of the epoch in progress; None if it cannot grow then."""
        return None

    def wants_recheck(self, readings: list[float]) -> bool:
        """Whether the controller should probe once more, on new samples, before ``observe`` (``policy.recheck``):
        ``readings`` are this epoch's λ_max so far, the probe's first."""
        return False

    def _decision(self, growth: str | None, reason: str, epochs_early: int = 0) -> Decision:
        s = self.state
        return Decision(s.global_batch_size, s.adv_ratio, s.probe_next, growth, reason, epochs_early)
