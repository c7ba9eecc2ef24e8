"""Batch geometry and LR scaling/schedule: exact tables computed by hand (pure, no torch)."""

from __future__ import annotations

import math

import pytest

from absa_cli.config import OptimConfig
from absa_cli.decide.geometry import BatchGeometry, scale_lr
from absa_cli.decide.schedule import lr_at


@pytest.mark.parametrize("global_batch, max_workers, per_worker_max, available, expected", [
    (128, 1, 128, None, (1, 128, 1)),
    (128, 64, 128, None, (1, 128, 1)),  # few workers when the batch is small: ABSA starts small
    (256, 64, 128, None, (2, 128, 1)),  # grow the group before accumulating
    (1024, 4, 128, None, (4, 128, 2)),  # capped at max_workers: accumulate
    (1024, 64, 128, 2, (2, 128, 4)),  # the cluster has only 2: accumulation keeps 1024 exact
    (384, 64, 128, None, (3, 128, 1)),
    (384, 2, 128, None, (2, 96, 2)),  # 192 per worker > 128: two micro-batches of 96
    (16384, 64, 256, None, (64, 256, 1)),
    (100, 8, 30, None, (4, 25, 1)),  # 4 is the smallest divisor of 100 that is >= ceil(100/30)
    (7, 4, 2, None, (1, 1, 7)),  # prime batch: the only divisor <= 4 is 1
])
def test_plan_table(global_batch, max_workers, per_worker_max, available, expected):
    geometry = BatchGeometry.plan(global_batch, max_workers, per_worker_max, available)
    assert (geometry.num_workers, geometry.per_worker_batch_size, geometry.grad_accum_steps) == expected
    assert geometry.num_workers * geometry.per_worker_batch_size * geometry.grad_accum_steps == global_batch


@pytest.mark.parametrize("args, match", [
    ((0, 1, 128), "global batch size must be positive"),
    ((128, 0, 128), "--max-gpus"),
    ((128, 1, 0), "batch.per_worker_max"),
])
def test_plan_errors(args, match):
    with pytest.raises(ValueError, match=match):
        BatchGeometry.plan(*args)


def test_plan_no_available_worker():
    with pytest.raises(ValueError, match="no worker is available"):
        BatchGeometry.plan(128, 4, 128, available_workers=0)


def test_geometry_must_multiply_out():
    with pytest.raises(ValueError, match="does not multiply out"):
        BatchGeometry(100, 3, 33, 1)


@pytest.mark.parametrize("geometry", [BatchGeometry(96, 3, 16, 2), BatchGeometry(64, 1, 64, 1), BatchGeometry(64, 4, 4, 4)])
def test_the_ranks_micro_batches_cut_the_global_batch_into_equal_contiguous_parts(geometry):
    """Each rank's micro-batches are its contiguous share in order, grad_accum_steps of them, each
    per_worker_batch_size long; together the ranks' cover every position of the global batch once."""
    plans = [geometry.micro_batches(rank) for rank in range(geometry.num_workers)]
    positions = [p for plan in plans for micro in plan for p in range(micro.start, micro.stop)]
    assert positions == list(range(geometry.global_batch_size))
    assert all(len(plan) == geometry.grad_accum_steps for plan in plans)
    assert {micro.stop - micro.start for plan in plans for micro in plan} == {geometry.per_worker_batch_size}
    assert plans[-1][0] == slice(geometry.global_batch_size - geometry.global_batch_size // geometry.num_workers,
                                 geometry.global_batch_size - geometry.global_batch_size // geometry.num_workers
                                 + geometry.per_worker_batch_size)


def test_scale_lr_rules():
    assert scale_lr(0.1, 128, 512, "linear") == pytest.approx(0.4)
    assert scale_lr(0.1, 128, 512, "sqrt") == pytest.approx(0.2)
    assert scale_lr(0.1, 128, 512, "none") == 0.1
    with pytest.raises(ValueError, match="optim.lr_scaling"):
        scale_lr(0.1, 128, 512, "cubic")


def test_lr_schedule_step_decay_and_warmup():
    optim = OptimConfig(lr=0.1, ref_batch_size=128, decay_epochs=[30, 60], decay_factor=0.2,
                        warmup_epochs=2.0, warmup_start_factor=0.1)
    assert lr_at(optim, 256, 0.0) == pytest.approx(0.2 * 0.1)  # warm-up starts at 10% of the scaled LR
    assert lr_at(optim, 256, 1.0) == pytest.approx(0.2 * 0.55)  # half-way through the ramp
    assert lr_at(optim, 256, 2.0) == pytest.approx(0.2)
    assert lr_at(optim, 256, 29.99) == pytest.approx(0.2)
    assert lr_at(optim, 256, 30.0) == pytest.approx(0.04)
    assert lr_at(optim, 256, 60.5) == pytest.approx(0.008)
    assert math.isclose(lr_at(OptimConfig(lr=0.1), 128, 0.0), 0.1)
