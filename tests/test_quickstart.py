"""End to end through the CLI: the policies change (or keep) the batch as their rules say, and the quickstart
itself — what `make demo` runs — learns well above chance, grows its batch at least twice, the first time because
the curvature halved, earlier than the `policy.duration` fallback would have, and finishes in under three minutes on
this 2-core machine.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from absa_cli.cli.app import app

from conftest import TINY

runner = CliRunner()


def _records(runs: Path) -> list[dict]:
    (metrics,) = runs.glob("*/metrics.jsonl")
    return [json.loads(line) for line in metrics.read_text().splitlines()]


def test_fixed_policy_never_changes_the_batch_and_never_probes(tmp_path):
    result = runner.invoke(app, ["train", "quickstart", *TINY, "epochs=3", "policy.name=fixed", "--local",
                                 "--runs-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    epochs = [r for r in _records(tmp_path) if r["kind"] == "epoch"]
    assert [r["global_batch_size"] for r in epochs] == [64, 64, 64]
    assert all(r["eigenvalue"] is None and r["adv_ratio"] == 0 for r in epochs)
    assert all("policy.name=fixed" in r["policy_reason"] or "fixed" in r["policy_reason"] for r in epochs)


def test_absa_grows_on_a_forced_drop_and_says_why(tmp_path, monkeypatch):
    """The real probe runs at every epoch boundary, but its reading is scaled down 100× an epoch (λ on a tiny run
    rises for its first epochs): each probe after the first is a drop, so the curvature grows the batch twice, to
    the cap, and each growth record must carry its reason."""
    import dataclasses

    from absa_cli.worker.probe import CurvatureProbe

    measure = CurvatureProbe.measure

    def falling(self, model, ctx, epoch, probe=None, draw=0):
        stats = measure(self, model, ctx, epoch, probe, draw)
        return dataclasses.replace(stats, eigenvalue=stats.eigenvalue / 100 ** epoch)

    monkeypatch.setattr(CurvatureProbe, "measure", falling)
    result = runner.invoke(app, ["train", "quickstart", *TINY, "epochs=4", "policy.duration=50", "--local",
                                 "--runs-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    epochs = [r for r in _records(tmp_path) if r["kind"] == "epoch"]
    assert [r["global_batch_size"] for r in epochs] == [64, 64, 128, 256]  # the first probe sets λ_ref; then 2 drops
    assert all(r["eigenvalue"] is not None and r["probe_s"] > 0 for r in epochs[:-1])
    assert epochs[-1]["eigenvalue"] is None and "the run ends after epoch 4" in epochs[-1]["policy_reason"]
    assert epochs[0]["adv_ratio"] == pytest.approx(0.2)
    for before, after in zip(epochs, epochs[1:]):
        grew = after["global_batch_size"] > before["global_batch_size"]
        assert grew == ("→" in before["policy_reason"]) == (before["growth"] is not None)
        if grew:
            assert after["global_batch_size"] == 2 * before["global_batch_size"]
            assert before["growth"] == "curvature" and "policy.eig_ratio" in before["policy_reason"]
            assert after["eigenvalue"] is not None or after is epochs[-1]  # the last epoch is not probed
            assert before["eigenvalue"] <= epochs[0]["eigenvalue"] or "λ_ref" in before["policy_reason"]


@pytest.mark.slow
def test_quickstart_demo_learns_grows_and_fits_the_budget(tmp_path, ray_cluster):
    started = time.perf_counter()
    result = runner.invoke(app, ["train", "quickstart", "--runs-dir", str(tmp_path)])
    elapsed = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    epochs = [r for r in _records(tmp_path) if r["kind"] == "epoch"]
    growths = [r for r in epochs if "→" in r["policy_reason"]]
    print(f"quickstart: {elapsed:.0f} s, test acc {epochs[-1]['test_acc']:.3f}, batches "
          f"{[r['global_batch_size'] for r in epochs]}, reasons {[r['policy_reason'] for r in growths]}")
    assert epochs[-1]["test_acc"] > 0.6  # chance is 0.1
    assert len(growths) >= 2 and epochs[-1]["global_batch_size"] >= 4 * epochs[0]["global_batch_size"]
    # the curvature steers: the first growth is λ_max halving, before the fallback would have grown the batch
    assert growths[0]["growth"] == "curvature" and growths[0]["growth_epochs_early"] > 0, growths[0]["policy_reason"]
    assert "λ_ref is now" in growths[0]["policy_reason"]
    assert all(r["dropped_samples"] == 0 for r in epochs)  # 8,192 samples: every batch of the schedule divides it
    resizes = [r for r in _records(tmp_path) if r["kind"] == "resize"]
    assert [(r["from_workers"], r["to_workers"]) for r in resizes] == [(1, 2)]  # grown live on this machine
    assert elapsed < 180, f"quickstart took {elapsed:.0f} s"


def test_robust_accuracy_is_reported_when_asked(tmp_path):
    result = runner.invoke(app, ["train", "quickstart", *TINY, "epochs=1", "eval.adversarial_eps=0.03", "--local",
                                 "--runs-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    (epoch,) = [r for r in _records(tmp_path) if r["kind"] == "epoch"]
    assert 0.0 <= epoch["test_acc_fgsm"] <= 1.0
    assert epoch["test_acc_fgsm"] <= epoch["test_acc"] + 0.05  # an attack does not make the model better
