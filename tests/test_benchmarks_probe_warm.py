"""benchmarks/probe_warm.py end to end on a tiny 3-epoch run that keeps every epoch's checkpoint: one row per
checkpoint, errors measured against a converged reference, the first checkpoint starts warm probes cold (so cold and
warm agree exactly there), and a run that kept fewer than two checkpoints is refused with a message."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from absa_cli import config as config_mod
from absa_cli.driver.controller import Controller
from absa_cli.driver.local_group import LocalGroup
from absa_cli.run.metrics import Console
from absa_cli.run.rundir import RunDir

from conftest import TINY, load_benchmark

@pytest.fixture(scope="module")
def probe_warm():
    return load_benchmark("probe_warm")


def _run(root: Path, keep_last: int) -> RunDir:
    config = config_mod.load("quickstart", [*TINY, "epochs=3", f"checkpoint.keep_last={keep_last}",
                                            "cluster.max_workers=1"])
    run = RunDir.create(root, config)
    Controller(config, run, LocalGroup(config), Console(stream=io.StringIO(), force_plain=True)).run_all()
    return run


def test_rows_and_summary_of_a_tiny_run(probe_warm, tmp_path, one_thread):
    run = _run(tmp_path, keep_last=3)
    out = tmp_path / "warm.json"
    assert probe_warm.main(["--run-dir", str(run.path), "--ref-iters", "40", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    rows, summary = data["rows"], data["summary"]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and summary["compared"] == 2
    assert rows[0]["cos_prev"] is None and all(0 <= r["cos_prev"] <= 1 + 1e-9 for r in rows[1:])
    for method in probe_warm.METHODS:  # no previous vector at the first checkpoint: both start cold
        assert rows[0][f"{method}_warm_hvps"] == rows[0][f"{method}_cold_hvps"]
        assert rows[0][f"{method}_warm_err"] == rows[0][f"{method}_cold_err"]
        assert summary[f"{method}_warm_hvps"] == sum(r[f"{method}_warm_hvps"] for r in rows[1:])
    for method in probe_warm.METHODS:  # later checkpoints really start from the previous vector
        assert any((r[f"{method}_warm_hvps"], r[f"{method}_warm_err"]) != (r[f"{method}_cold_hvps"],
                                                                          r[f"{method}_cold_err"]) for r in rows[1:])
    assert all(r["ref_converged"] and r["lambda_ref"] > 0 for r in rows)
    assert all(r["lanczos_warm_err"] < 0.05 for r in rows)  # Lanczos to tol 1e-2: a few percent at worst


def test_a_run_without_per_epoch_checkpoints_is_refused(probe_warm, tmp_path, one_thread):
    run = _run(tmp_path, keep_last=1)
    with pytest.raises(SystemExit, match="keeps 1 epoch checkpoint"):
        probe_warm.main(["--run-dir", str(run.path)])
