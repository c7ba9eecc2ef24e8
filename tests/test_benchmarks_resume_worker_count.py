"""benchmarks/resume_worker_count.py without a cluster: its metric, and that its cases are what docs/benchmarks.md
and docs/runs.md say they are. The ``order`` case must stay tests/test_resume_cluster.py's run (the docs quote its
figure as the test's), and the planner must split each case's batch as the table shows: the same micro-batches on
2 workers and on 1 (``quickstart``, ``dropout``, ``order``) or another micro-batch size (``microbatch``)."""

from __future__ import annotations

import pytest
import torch

from absa_cli import config as config_mod
from absa_cli.decide.geometry import BatchGeometry

from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("resume_worker_count")


def test_the_order_case_is_the_resume_tests_run_stopped_where_the_test_stops_it(bench):
    pytest.importorskip("ray")
    from test_resume_cluster import RUN

    overrides, stop_after = bench.CASES["order"]
    assert stop_after == 1  # the test SIGKILLs its driver after epoch 1's checkpoint
    keep = {o for o in RUN if o.startswith("checkpoint.keep_last=")}  # the benchmark keeps every checkpoint
    assert set(overrides) == set(RUN) - keep


@pytest.mark.parametrize("case, batch, on_two, on_one", [
    ("quickstart", 256, (2, 128, 1), (1, 128, 2)),
    ("quickstart-10", 512, (2, 128, 2), (1, 128, 4)),
    ("quickstart-10", 1024, (2, 128, 4), (1, 128, 8)),
    ("dropout", 256, (2, 128, 1), (1, 128, 2)),
    ("order", 128, (2, 64, 1), (1, 64, 2)),
    ("order", 256, (2, 64, 2), (1, 64, 4)),
    ("microbatch", 192, (2, 48, 2), (1, 64, 3)),
])
def test_each_case_splits_its_batch_as_the_table_says(bench, case, batch, on_two, on_one):
    config = config_mod.load("quickstart", bench.CASES[case][0])
    for workers, want in ((2, on_two), (1, on_one)):
        got = BatchGeometry.plan(batch, workers, config.batch.per_worker_max)
        assert (got.num_workers, got.per_worker_batch_size, got.grad_accum_steps) == want


def test_compare_models_measures_relative_differences_per_tensor_and_overall(bench):
    want = {"w": torch.tensor([3.0, 4.0]), "b": torch.tensor([1.0]), "steps": torch.tensor(7)}
    same = bench.compare_models({k: v.clone() for k, v in want.items()}, want)
    assert same["bitwise_equal"] and same["max_tensor_rel"] == same["model_rel"] == same["max_abs"] == 0.0
    got = {**want, "b": torch.tensor([1.1])}
    diff = bench.compare_models(got, want)
    assert not diff["bitwise_equal"] and diff["worst_tensor"] == "b"
    assert diff["max_tensor_rel"] == pytest.approx(0.1, rel=1e-5)  # ‖Δb‖ / ‖b‖
    assert diff["model_rel"] == pytest.approx(0.1 / 26 ** 0.5, rel=1e-5)  # ‖Δ‖ / ‖(w, b)‖: integers are left out
    assert diff["max_abs"] == pytest.approx(0.1, rel=1e-5)
