"""How long a schedule takes and what it holds, from a step-time model (pure: ``absa plan --profile``).

For each epoch of a batch schedule: the geometry the driver would choose (``decide_membership``, every allowed
worker available; steered by the model where the run sets ``cluster.profile``), its steps, evaluation, probe (the
ABS policies probe while the batch can still grow, never after the last epoch) and per-epoch rest, from
``StepModel.epoch_seconds``; the group's start once.
Worker-hours used are seconds × workers; held idle, seconds × (``--max-gpus`` − workers): what a reservation of the
whole allowance would pay for without using.
"""

from __future__ import annotations

from typing import Any, Callable

from absa_cli.config import RunConfig
from absa_cli.decide.geometry import BatchGeometry, steps_in_epoch
from absa_cli.decide.membership import decide_membership
from absa_cli.decide.policy import ADAPTIVE_POLICIES, attacked_share
from absa_cli.decide.throughput import StepModel


def driver_geometry(config: RunConfig, model: StepModel, batch: int, max_workers: int) -> BatchGeometry:
    """The geometry absa's driver chooses for ``batch``, every allowed worker available: with the model when the
    run is configured to use one (``cluster.profile``), else by the batch alone."""
    steering = model if config.cluster.profile else None
    return decide_membership(batch, None, max_workers, 0, max_workers, config.batch.per_worker_max,
                             steering).geometry


def fastest_split(config: RunConfig, model: StepModel, batch: int, max_workers: int) -> BatchGeometry:
    """The fastest way to run ``batch`` on up to ``max_workers`` workers, splitting it finer than absa's driver
    does if that pays (``fixed`` on its best worker count): every worker count that divides the batch."""
    counts = [n for n in range(1, min(max_workers, batch) + 1) if batch % n == 0]
    candidates = [BatchGeometry.plan(batch, n, config.batch.per_worker_max) for n in counts]
    candidates += [BatchGeometry(batch, n, batch // n, 1) for n in counts if batch // n <= config.batch.per_worker_max]
    return min(candidates, key=lambda g: (model.step_s(g.num_workers, g.per_worker_batch_size, g.grad_accum_steps),
                                          g.num_workers))


def time_schedule(config: RunConfig, model: StepModel, batches: list[int], num_samples: int, test_samples: int,
                  max_workers: int, probes: bool, choose: Callable[..., BatchGeometry] = driver_geometry,
                  adversarial: bool = False, rechecks: int = 0) -> dict[str, Any]:
    """Seconds, worker-hours used and held idle, per run of epochs at one geometry (and FGSM share) and in total;
    ``choose``: the geometry for a batch; ``adversarial``: the schedule is ``config``'s policy's own, whose FGSM
    epochs (``absa``) cost one more pass over the attacked samples; ``rechecks``: more probes after every probe but
    the first (``policy.recheck``: ``time_cases`` charges them in both envelopes)."""
    phases: list[dict[str, Any]] = []
    largest = config.policy.max_global_batch
    for epoch, batch in enumerate(batches, start=1):
        g = choose(config, model, batch, max_workers)
        probe = probes and batch < largest and epoch < len(batches)
        attacked = attacked_share(config, epoch, batch) if adversarial else 0.0
        seconds = model.epoch_seconds(g.num_workers, g.per_worker_batch_size, g.grad_accum_steps,
                                      steps_in_epoch(num_samples, batch), test_samples,
                                      probe * (1 + (rechecks if epoch > 1 else 0)), attacked)
        shape = (batch, g.num_workers, g.per_worker_batch_size, g.grad_accum_steps, attacked)
        if phases and phases[-1]["shape"] == shape:
            phases[-1]["last_epoch"], phases[-1]["seconds"] = epoch, phases[-1]["seconds"] + seconds
        else:
            phases.append({"shape": shape, "first_epoch": epoch, "last_epoch": epoch, "seconds": seconds,
                           "global_batch_size": batch, "num_workers": g.num_workers,
                           "per_worker_batch_size": g.per_worker_batch_size, "grad_accum_steps": g.grad_accum_steps,
                           "attacked": attacked,
                           "step_s": model.step_s(g.num_workers, g.per_worker_batch_size, g.grad_accum_steps,
                                                  attacked)})
    for phase in phases:
        phase.pop("shape")
        phase["worker_hours"] = phase["seconds"] * phase["num_workers"] / 3600
        phase["idle_worker_hours"] = phase["seconds"] * (max_workers - phase["num_workers"]) / 3600
    total = model.start_s + sum(p["seconds"] for p in phases)
    return {"phases": phases, "seconds": total, "worker_hours": sum(p["worker_hours"] for p in phases),
            "idle_worker_hours": sum(p["idle_worker_hours"] for p in phases)}


def time_cases(config: RunConfig, model: StepModel, cases: dict[str, list[int]], num_samples: int,
               test_samples: int, max_workers: int) -> dict[str, dict[str, Any]]:
    """The absa envelopes (``cases``: name → batch per epoch) beside ``fixed`` (the starting batch throughout, on
    the worker count the model finds fastest) and ``fixed-large`` (``policy.max_global_batch`` throughout). Every
    probe after the first is charged ``policy.recheck`` rechecks in both envelopes: where λ drops at every probe
    (the fastest case) each recheck confirms it; in the slowest case it is the most a probe can take (each drop
    refuted by its last recheck), so that case stays the longest the run can take."""
    epochs = config.epochs
    adaptive = config.policy.name in ADAPTIVE_POLICIES  # the baselines never probe
    timed = {name: time_schedule(config, model, batches, num_samples, test_samples, max_workers, probes=adaptive,
                                 adversarial=True, rechecks=config.policy.recheck if adaptive else 0)
             for name, batches in cases.items()}
    timed["fixed"] = time_schedule(config, model, [config.batch.global_batch_size] * epochs, num_samples,
                                   test_samples, max_workers, probes=False, choose=fastest_split)
    timed["fixed-large"] = time_schedule(config, model, [config.policy.max_global_batch] * epochs, num_samples,
                                         test_samples, max_workers, probes=False)
    return timed
