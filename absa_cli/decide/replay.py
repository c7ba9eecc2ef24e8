"""A policy replayed on a scripted λ sequence: the tests' trajectories and ``absa plan``'s envelope."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from absa_cli.config import RunConfig
from absa_cli.decide.policy import Decision, EpochMeasurements, make_policy


Readings = float | tuple[float, ...] | None


def trajectory(config: RunConfig, eigenvalues: list[Readings]) -> list[Decision]:
    """Replay a scripted run: ``[initial(), decision after epoch 1, ...]`` (one more than ``eigenvalues``).

    ``eigenvalues[k]`` is the probe's λ at the end of epoch k+1; it is dropped (None) when the previous decision
    did not ask for a probe, as the controller would not have probed. A tuple scripts the epoch's readings in the
    order the controller would take them (the probe, then its rechecks, ``policy.recheck``); a number is every
    reading of the epoch.
    """
    return replay(config, eigenvalues)[0]


def replay(config: RunConfig, eigenvalues: list[Readings]) -> tuple[list[Decision], list[dict[str, Any]]]:
    """``trajectory``'s decisions, and beside each the policy's state its LR follows through the epoch the decision
    is for. The state is copied at the start and at each growth only: between growths ``lr`` depends on nothing the
    policy changes (the batch, and the ramp set at the growth), and a copy per epoch would slow a 100,000-epoch
    plan by a second."""
    policy = make_policy(config)
    decisions, states = [policy.initial()], [policy.state_dict()]
    for epoch, eig in enumerate(eigenvalues, start=1):
        readings = _readings(policy, eig) if decisions[-1].probe_next and eig is not None else [None]
        decisions.append(policy.observe(EpochMeasurements(epoch, config.epochs, readings[0], tuple(readings[1:]))))
        states.append(policy.state_dict() if decisions[-1].grew else states[-1])
    return decisions, states


def _readings(policy: Any, scripted: float | tuple[float, ...]) -> list[float]:
    """The readings the controller would take at an epoch's end: the probe, then a recheck while the policy asks."""
    script = list(scripted) if isinstance(scripted, tuple) else None
    if script == []:
        raise ValueError("an empty tuple scripts no reading: script None for an epoch without a probe")
    readings = [script.pop(0) if script is not None else scripted]
    while policy.wants_recheck(readings):
        if script == []:
            raise ValueError(f"the policy asked for recheck {len(readings)} after {scripted}, which scripts none")
        readings.append(script.pop(0) if script is not None else scripted)
    if script:
        raise ValueError(f"{scripted} scripts {len(scripted)} readings but the policy took {len(readings)} "
                         f"(it rechecks only while every reading shows the drop, policy.recheck times at most)")
    return readings


def lr_in_state(config: RunConfig, state: dict[str, Any], epoch_progress: float) -> float:
    """The LR the run's policy gives at ``epoch_progress`` while it holds ``state`` (``replay``'s): a fresh policy
    loads it as a resumed run does and answers with its own ``lr``, so a plan's LR is the run's for every policy
    (``fixed-large``'s warm-up from the unscaled ``optim.lr``, the ramp after a growth)."""
    policy = make_policy(config)
    policy.load_state_dict(state)
    return policy.lr(epoch_progress)


@dataclass(frozen=True)
class ScheduleBounds:
    """Per epoch (index 0 = epoch 1), the global batch in the two bounding cases of the ABS rule, and the cause of
    the growth that led into the epoch (CURVATURE, FALLBACK, or None: the start or no growth)."""

    fastest: list[int]  # λ drops enough at every probe: growth as early as the rule allows
    slowest: list[int]  # λ never drops: growth only by the policy.duration fallback
    fastest_growths: list[str | None]
    slowest_growths: list[str | None]
    fastest_states: list[dict[str, Any]]  # the policy state each epoch's LR follows (``replay``; ``lr_in_state``)
    slowest_states: list[dict[str, Any]]


def schedule_bounds(config: RunConfig) -> ScheduleBounds:
    """The batch-size envelope ``absa plan`` shows (fixed policies: both bounds are the constant batch)."""
    num_epochs = config.epochs
    falling = [1.0]
    for _ in range(num_epochs - 1):  # each probe exactly at the previous one / eig_ratio, as the rule computes it
        falling.append(falling[-1] / config.policy.eig_ratio)
    flat = [1.0] * num_epochs
    (fastest, fastest_states), (slowest, slowest_states) = (replay(config, eigs) for eigs in (falling, flat))
    fastest, slowest = fastest[:num_epochs], slowest[:num_epochs]
    return ScheduleBounds(fastest=[d.global_batch_size for d in fastest],
                          slowest=[d.global_batch_size for d in slowest],
                          fastest_growths=[d.growth for d in fastest], slowest_growths=[d.growth for d in slowest],
                          fastest_states=fastest_states[:num_epochs], slowest_states=slowest_states[:num_epochs])
