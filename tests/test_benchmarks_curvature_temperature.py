"""benchmarks/curvature_vs_temperature.py on hand-made iterations.py results: each pair of consecutive probed epochs
lands in the group of what changed between them (the batch factor, the η/B factor; epochs 1 → 2 apart), with the
geometric mean, range and halvings of λ(e+1) / λ(e) computed from exactly those pairs; unprobed epochs, the fixed
baseline and NaN probes are left out."""

from __future__ import annotations

import json
import math

import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("curvature_vs_temperature")


def _epoch(epoch: int, batch: int, lr: float, eigenvalue: float | None, test_loss: float = 1.0) -> dict:
    return {"epoch": epoch, "global_batch_size": batch, "lr": lr, "eigenvalue": eigenvalue, "test_loss": test_loss}


def _results(tmp_path, runs: list[dict]) -> str:
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"results": [{"runs": runs}]}))
    return str(path)


ABSA = {"policy": "absa", "seed": 0, "epochs": [
    _epoch(1, 128, 0.02, 100.0),
    _epoch(2, 128, 0.02, 40.0),    # 1 → 2: 0.4, its own group
    _epoch(3, 256, 0.04, 50.0),    # growth, η/B kept: 1.25
    _epoch(4, 256, 0.04, 45.0, test_loss=0.8),   # nothing changed: 0.9 (test loss 0.8)
    _epoch(5, 256, 0.008, 9.0, test_loss=0.4),   # LR decay, η/B × 0.2: 0.2 (test loss 0.5)
    _epoch(6, 512, 0.016, None),   # not probed: no pair with 5 or 7
    _epoch(7, 512, 0.016, 12.0),
    _epoch(8, 512, 0.016, 6.0, test_loss=float("nan")),  # nothing changed: 0.5, a halving (no loss ratio)
]}
NOSCALE = {"policy": "absa[noscale]", "seed": 0, "epochs": [
    _epoch(1, 128, 0.02, 80.0),
    _epoch(2, 256, 0.02, float("nan")),  # a NaN probe pairs with nothing
    _epoch(3, 256, 0.02, 30.0),
    _epoch(4, 512, 0.02, 12.0),    # growth, η/B × 0.5: 0.4
]}
FIXED = {"policy": "fixed", "seed": 0, "epochs": [_epoch(1, 128, 0.02, None), _epoch(2, 128, 0.02, None)]}


def test_pairs_are_grouped_by_what_changed(bench, tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert bench.main([_results(tmp_path, [ABSA, NOSCALE, FIXED]), "--out", str(out)]) == 0
    rows = {r["change"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == [bench.FIRST, "batch ×1, η/B ×1", "batch ×2, η/B ×1", "batch ×2, η/B ×0.5",
                          "batch ×1, η/B ×0.2"]
    assert rows[bench.FIRST]["pairs"] == 1 and rows[bench.FIRST]["geomean"] == pytest.approx(0.4)
    same = rows["batch ×1, η/B ×1"]
    assert same["pairs"] == 2 and same["geomean"] == pytest.approx(math.sqrt(0.9 * 0.5))
    assert (same["min"], same["max"], same["halved"]) == (pytest.approx(0.5), pytest.approx(0.9), 1)
    assert rows["batch ×2, η/B ×1"]["geomean"] == pytest.approx(1.25) and rows["batch ×2, η/B ×1"]["halved"] == 0
    assert rows["batch ×2, η/B ×0.5"]["geomean"] == pytest.approx(0.4)
    assert rows["batch ×1, η/B ×0.2"]["geomean"] == pytest.approx(0.2)
    assert rows["batch ×1, η/B ×0.2"]["test_loss_geomean"] == pytest.approx(0.5)
    assert same["test_loss_geomean"] == pytest.approx(0.8)  # epochs 3 → 4 only: epoch 8's loss is NaN
    assert sum(r["pairs"] for r in rows.values()) == 6
    printed = capsys.readouterr().out
    assert "2 runs: absa, absa[noscale]" in printed and "| batch ×2, η/B ×0.5 | 1 | 0.40 | 0.40–0.40 | 1 of 1 | 1.00 |" in printed


def test_policies_filter_and_bad_input(bench, tmp_path, capsys):
    results = _results(tmp_path, [ABSA, NOSCALE, FIXED])
    out = tmp_path / "rows.json"
    assert bench.main([results, "--policies", "absa[noscale]", "--out", str(out)]) == 0
    assert [r["change"] for r in json.loads(out.read_text())["rows"]] == ["batch ×2, η/B ×0.5"]  # 1 → 2: NaN
    assert bench.main([_results(tmp_path, [FIXED])]) == 2
    assert "no absa or abs run" in capsys.readouterr().err
    (tmp_path / "other.json").write_text("{}")
    assert bench.main([str(tmp_path / "other.json")]) == 2
    assert "not a results file" in capsys.readouterr().err
