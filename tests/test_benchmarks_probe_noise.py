"""benchmarks/probe_noise.py end to end on a tiny 2-epoch run that keeps both checkpoints: one row per checkpoint,
λ_max read on each probe set, the summary (mean, std, CV) computed from exactly those readings, and the curvature of
the large set along the small set's top direction, which cannot exceed the large set's own λ_max."""

from __future__ import annotations

import io
import json
import statistics

import pytest

from absa_cli import config as config_mod
from absa_cli.driver.controller import Controller
from absa_cli.driver.local_group import LocalGroup
from absa_cli.run.metrics import Console
from absa_cli.run.rundir import RunDir

from conftest import TINY, load_benchmark


@pytest.fixture(scope="module")
def probe_noise():
    return load_benchmark("probe_noise")


def test_rows_of_a_tiny_run(probe_noise, tmp_path, one_thread):
    config = config_mod.load("quickstart", [*TINY, "checkpoint.keep_last=2", "cluster.max_workers=1"])
    run = RunDir.create(tmp_path, config)
    Controller(config, run, LocalGroup(config), Console(stream=io.StringIO(), force_plain=True)).run_all()
    out = tmp_path / "noise.json"
    assert probe_noise.main(["--run-dir", str(run.path), "--seeds", "3", "--large-batches", "2", "--tol", "1e-2",
                             "--max-iter", "12", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        small = [r["values"][f"seed{s}"] for s in range(3)]
        assert set(r["values"]) == {"seed0", "seed1", "seed2", "large"} and r["large"] == r["values"]["large"]
        assert r["mean"] == pytest.approx(statistics.fmean(small)) and r["std"] == pytest.approx(statistics.stdev(small))
        assert r["cv"] == pytest.approx(r["std"] / abs(r["mean"]))
        assert len(set(small)) == 3  # different probe sets, different readings
        assert 0 < r["v_on_large"] <= r["large"] * (1 + 1e-2)  # a Rayleigh quotient: at most λ_max (to the tol)


def test_a_run_without_checkpoints_is_refused(probe_noise, tmp_path):
    config = config_mod.load("quickstart", TINY)
    run = RunDir.create(tmp_path, config)
    with pytest.raises(SystemExit, match="no epoch checkpoint"):
        probe_noise.main(["--run-dir", str(run.path)])
