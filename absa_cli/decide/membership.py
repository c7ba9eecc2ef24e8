"""Who decides how many workers: one pure decision (no torch, no Ray, no clock).

The driver asks ``decide_membership`` at every point where the group may change size — an epoch boundary, after a
worker was lost, after the cluster gave fewer workers than asked — and only acts on the answer. The inputs are all
the facts that matter: the policy's global batch and the batch it may grow to next, the workers the cluster offers
now (``capacity``: the group's own, its spares and the free slots), the group's current size, and the two config
limits (``cluster.max_workers``, ``batch.per_worker_max``). The answer is a frozen ``Membership``: the geometry
(workers × per-worker batch × accumulation), how many workers to have started ahead for the next batch, and a
one-line reason naming the config field or the capacity behind it.

``check_geometries`` refuses, at config time, a schedule whose batches cannot be split into useful micro-batches
(a prime global batch would train one sample at a time).
"""

from __future__ import annotations

from dataclasses import dataclass

from absa_cli.config import ConfigError, RunConfig
from absa_cli.decide.geometry import BatchGeometry
from absa_cli.decide.throughput import StepModel, fastest_workers
from absa_cli.errors import counted, duration


@dataclass(frozen=True)
class Membership:
    """The group for the next stretch of training, and why."""

    geometry: BatchGeometry
    prestart: int  # the group size to have started ahead for the policy's next batch; 0: nothing to start
    reason: str
    wanted: int = 0  # the group size this batch wants where the cluster has room for it (0: as the geometry)

    @property
    def num_workers(self) -> int:
        return self.geometry.num_workers

    @property
    def target(self) -> int:
        """The group size worth asking the cluster (its autoscaler) for: what this batch wants where there is room,
        or the next batch's readied group if larger."""
        return max(self.wanted, self.prestart)


def _worth(model: StepModel | None, batch: int, max_workers: int, per_worker_max: int) -> tuple[int, str]:
    """The most workers worth having for ``batch``: as many as carry it without accumulation (at most
    ``max_workers``), or, with a step-time model, the count it predicts fastest; and why, when the model decided."""
    unlimited = BatchGeometry.plan(batch, max_workers, per_worker_max)
    if model is None:
        return unlimited.num_workers, ""
    best, predicted = fastest_workers(model, batch, unlimited.num_workers, per_worker_max, BatchGeometry.plan)
    if best >= unlimited.num_workers:
        return unlimited.num_workers, ""
    return best, (f"{model.describe()} predicts {duration(predicted[best])} a step on {best} and "
                  f"{duration(predicted[unlimited.num_workers])} on {unlimited.num_workers}")


def decide_membership(global_batch_size: int, next_global_batch_size: int | None, capacity: int, current: int,
                      max_workers: int, per_worker_max: int, model: StepModel | None = None) -> Membership:
    """The workers for ``global_batch_size`` given what the cluster offers.

    1. the geometry: as few workers as carry the batch without accumulation (``batch.per_worker_max`` each), at most
       ``cluster.max_workers`` and at most ``capacity``; accumulation covers the rest, so the batch stays exact;
    2. workers to start ahead: the group size the next batch would want, when the policy may grow to one that
       needs more workers than this geometry (starting actors is the whole cost of a grow; ahead, it overlaps
       training);
    3. the reason: which limit decided the count;
    4. what to ask the cluster for (``target``): the workers the batch wants beyond ``capacity``, or the readied group
       for the next batch — an autoscaler can add nodes for them before they are needed.
    """
    if capacity <= 0:
        raise ValueError(f"no worker can start: the cluster offers {capacity} slots (cluster.max_workers="
                         f"{max_workers})")
    worth, by_model = _worth(model, global_batch_size, max_workers, per_worker_max)
    geometry = BatchGeometry.plan(global_batch_size, max_workers, per_worker_max,
                                  available_workers=min(capacity, worth))
    unlimited = BatchGeometry.plan(global_batch_size, max_workers, per_worker_max, available_workers=worth)
    count = counted(geometry.num_workers, "worker")
    change = "" if current in (0, geometry.num_workers) else f" ({current}→{geometry.num_workers})"
    if geometry.num_workers < unlimited.num_workers:
        why = (f"the cluster offers {capacity} of the {unlimited.num_workers} wanted; accumulation keeps the batch "
               f"exact")
    elif by_model:
        why = f"no more: {by_model}"
    elif unlimited.grad_accum_steps > 1:
        why = f"at most cluster.max_workers={max_workers}"
    else:
        why = f"batch.per_worker_max={per_worker_max} each"
    reason = f"{count}{change} for batch {global_batch_size}: {why}"
    prestart = 0
    if next_global_batch_size is not None and next_global_batch_size > global_batch_size:
        wanted, _ = _worth(model, next_global_batch_size, max_workers, per_worker_max)
        if wanted > geometry.num_workers:
            prestart = wanted
            reason += f"; {counted(wanted, 'worker')} readied for the policy's next batch {next_global_batch_size}"
    return Membership(geometry, prestart, reason, wanted=unlimited.num_workers)


def check_geometries(config: RunConfig, batches: list[int], fix: str = "") -> None:
    """``ConfigError`` if a batch of the run's schedule (``batches``) splits only into tiny micro-batches on some
    group size the cluster may offer (1 … ``cluster.max_workers``): less than half of what ``batch.per_worker_max``
    and the worker count would allow, e.g. a prime batch, trained one sample at a time. ``fix``: what the line
    advises (by default, batches with small factors; a resume, whose batches are its recipe's, names its worker
    count)."""
    max_workers, per_worker_max = config.cluster.max_workers, config.batch.per_worker_max
    for batch in batches:
        for available in range(1, min(max_workers, batch) + 1):  # beyond the batch: the same geometry
            geometry = BatchGeometry.plan(batch, max_workers, per_worker_max, available_workers=available)
            room = min(per_worker_max, -(-batch // geometry.num_workers))
            if 2 * geometry.per_worker_batch_size < room:
                raise ConfigError(
                    f"global batch {batch} splits badly: on {counted(geometry.num_workers, 'worker')} it needs "
                    f"micro-batches of {geometry.per_worker_batch_size} ({geometry.grad_accum_steps} accumulation "
                    f"steps) where batch.per_worker_max={per_worker_max} allows {room}; " + (fix or
                    f"choose batch.global_batch_size and policy.max_global_batch with small factors, e.g. multiples "
                    f"of {min(per_worker_max, 128)}"))
