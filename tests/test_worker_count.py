"""The same steps on 2 workers and on 1 worker with gradient accumulation, on a real two-process gloo group.

What docs/runs.md ("Exactness") promises for a run resumed on another worker count, step by step: with the same
micro-batches, 2 workers × 1 micro-batch and 1 worker × 2 accumulation steps apply bitwise the same updates (the
gradient is one floating-point sum of two terms either way; the BatchNorm running statistics are averaged over
micro-batches, and dropout masks are drawn per micro-batch from its position, so neither depends on which worker ran
it); with more micro-batches per worker the same terms are summed in another order, and the weights agree only to
rounding. The model is the AlexNet-style net (BatchNorm and dropout), with FGSM on a fraction of every batch; both
ranks and the single process run one torch thread, as Ray workers do.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from absa_cli import config as config_mod
from absa_cli.decide.geometry import BatchGeometry
from absa_cli.dist import init_process_group
from absa_cli.worker.engine import Engine

from conftest import run_gloo_ranks

OVERRIDES = ["model.name=alexnet", "model.width=0.25", "data.train_size=512", "data.test_size=64",
             "policy.max_global_batch=256"]
LRS = [0.05] * 3
ADV_RATIO = 0.2
CASES = {  # name: (2-worker geometry, 1-worker geometry): the same micro-batches of 32 at the same positions
    "one_each": (BatchGeometry(64, 2, 32, 1), BatchGeometry(64, 1, 32, 2)),
    "two_each": (BatchGeometry(128, 2, 32, 2), BatchGeometry(128, 1, 32, 4)),
}
DEADLINE_S = 90.0


def _train(geometry: BatchGeometry, ctx=None) -> dict[str, torch.Tensor]:
    engine = Engine(config_mod.load("quickstart", OVERRIDES), ctx=ctx, device=torch.device("cpu"))
    engine.train_chunk(0, 0, LRS, geometry, adv_ratio=ADV_RATIO)
    return {name: tensor.clone() for name, tensor in engine.model.state_dict().items()}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    ctx = init_process_group("gloo", rank, 2, f"file://{init_file}", timeout_s=30)
    try:
        results = {name: _train(two, ctx) for name, (two, _) in CASES.items()}
        ctx.barrier()
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("worker-count")
    return run_gloo_ranks(_worker, out, 2, DEADLINE_S)


def _differences(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> dict[str, float]:
    """Relative L2 difference of every floating-point tensor that differs at all."""
    return {name: ((got[name] - want[name]).norm() / want[name].norm().clamp_min(1e-30)).item()
            for name in want if want[name].is_floating_point() and not torch.equal(got[name], want[name])}


def test_two_workers_with_one_micro_batch_each_equal_one_worker_accumulating_two_bitwise(two_workers, one_thread):
    first, second = two_workers
    one = _train(CASES["one_each"][1])
    assert _differences(first["one_each"], one) == {}  # parameters, BatchNorm statistics: every bit
    assert _differences(second["one_each"], one) == {}
    untrained = Engine(config_mod.load("quickstart", OVERRIDES), device=torch.device("cpu")).model.state_dict()
    assert _differences(one, untrained)  # it trained


def test_more_micro_batches_per_worker_only_change_the_summation_order(two_workers, one_thread):
    first, second = two_workers
    assert _differences(first["two_each"], second["two_each"]) == {}  # the ranks agree with each other exactly
    one = _train(CASES["two_each"][1])
    gaps = _differences(first["two_each"], one)
    assert max(gaps.values(), default=0.0) < 1e-4, gaps  # rounding after 3 steps, not another computation
