"""Batch geometry and learning-rate scaling (decide/: pure).

``global_batch_size = num_workers × per_worker_batch_size × grad_accum_steps``, exactly. The planner uses as few
workers as it takes to avoid gradient accumulation (ABSA starts small on few devices and grows the worker group
with the batch), never more than ``max_workers`` or than the cluster has available; when workers run short,
accumulation keeps the global batch exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from absa_cli.errors import counted


@dataclass(frozen=True)
class BatchGeometry:
    global_batch_size: int
    num_workers: int
    per_worker_batch_size: int
    grad_accum_steps: int

    def __post_init__(self) -> None:
        product = self.num_workers * self.per_worker_batch_size * self.grad_accum_steps
        if product != self.global_batch_size:
            raise ValueError(
                f"batch geometry does not multiply out: {self.num_workers} workers × {self.per_worker_batch_size} "
                f"per worker × {self.grad_accum_steps} accumulation steps = {product}, "
                f"not the global batch {self.global_batch_size}")

    @classmethod
    def plan(cls, global_batch_size: int, max_workers: int, per_worker_max: int,
             available_workers: int | None = None) -> BatchGeometry:
        """The geometry for ``global_batch_size`` within the worker and memory limits.

        Steps:
        1. worker cap = min(max_workers, available_workers);
        2. workers needed to avoid accumulation = ceil(global / per_worker_max);
        3. workers = the smallest divisor of the global batch ≥ needed and ≤ cap, else the largest divisor ≤ cap;
        4. accumulation = the smallest divisor of the per-worker share that brings micro-batches ≤ per_worker_max.
        """
        if global_batch_size <= 0:
            raise ValueError(f"global batch size must be positive, got {global_batch_size}")
        if per_worker_max <= 0:
            raise ValueError(f"per-worker maximum batch must be positive, got {per_worker_max} "
                             f"(set batch.per_worker_max)")
        if max_workers <= 0:
            raise ValueError(f"max workers must be positive, got {max_workers} (set --max-gpus to 1 or more)")
        cap = max_workers if available_workers is None else min(max_workers, available_workers)
        if cap <= 0:
            raise ValueError(f"no worker is available (available_workers={available_workers}); "
                             f"the cluster has no free GPU/CPU slot for a worker")
        divisors = _divisors(global_batch_size)
        needed = math.ceil(global_batch_size / per_worker_max)
        fitting = [d for d in divisors if needed <= d <= cap]
        num_workers = fitting[0] if fitting else max(d for d in divisors if d <= cap)
        share = global_batch_size // num_workers
        grad_accum_steps = next(a for a in _divisors(share) if share // a <= per_worker_max)
        return cls(global_batch_size, num_workers, share // grad_accum_steps, grad_accum_steps)

    def describe(self) -> str:
        return (f"global batch {self.global_batch_size} = {counted(self.num_workers, 'worker')} × "
                f"{self.per_worker_batch_size} per worker × {counted(self.grad_accum_steps, 'accumulation step')}")

    def micro_batches(self, rank: int) -> list[slice]:
        """Rank ``rank``'s micro-batches of a global batch, as ranges of positions within it: its contiguous share,
        cut into ``grad_accum_steps`` equal parts (the geometry multiplies out, so nothing is left over). Every rank
        has the same number of them."""
        share, micro = self.global_batch_size // self.num_workers, self.per_worker_batch_size
        first = rank * share
        return [slice(first + a * micro, first + (a + 1) * micro) for a in range(self.grad_accum_steps)]


def steps_in_epoch(num_samples: int, global_batch_size: int) -> int:
    """Optimizer steps in an epoch: every one of exactly ``global_batch_size`` samples. The epoch's tail (fewer
    samples than a global batch) is dropped: an update of fewer samples at the LR scaled for the full batch would
    be a different, larger step. (The reference skips a partial micro-batch and carries full ones into the next
    epoch's first update; docs/policy.md says why absa drops the tail instead.)"""
    return num_samples // global_batch_size


def samples_in_epoch(num_samples: int, global_batch_size: int) -> int:
    """The samples an epoch applies: its first ``steps × global_batch_size`` positions; the rest are dropped."""
    return steps_in_epoch(num_samples, global_batch_size) * global_batch_size


def scale_lr(lr: float, ref_batch_size: int, global_batch_size: int, rule: str) -> float:
    """``lr`` is stated at ``ref_batch_size``; return it at ``global_batch_size`` under ``rule``."""
    ratio = global_batch_size / ref_batch_size
    if rule == "linear":
        return lr * ratio
    if rule == "sqrt":
        return lr * math.sqrt(ratio)
    if rule == "none":
        return lr
    raise ValueError(f"unknown LR scaling rule {rule!r}; use linear, sqrt or none (optim.lr_scaling)")


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))
