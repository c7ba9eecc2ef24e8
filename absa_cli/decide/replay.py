"""A policy replayed on a scripted λ sequence: the tests' trajectories and ``absa plan``'s envelope."""

from __future__ import annotations

from dataclasses import dataclass

from absa_cli.config import RunConfig
from absa_cli.decide.policy import Decision, EpochMeasurements, make_policy


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
    return ScheduleBounds(fastest=[d.global_batch_size for d in fastest],
                          slowest=[d.global_batch_size for d in slowest],
                          fastest_growths=[d.growth for d in fastest], slowest_growths=[d.growth for d in slowest])
