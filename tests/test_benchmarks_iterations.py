"""benchmarks/iterations.py end to end on a tiny quickstart: the runs' updates equal the count the batch schedule
implies (steps per epoch at each epoch's batch), the tables and the JSON agree with the runs, and CIFAR-10 is
skipped with a message when --data-root does not hold it. The summary arithmetic is checked on scripted runs."""

from __future__ import annotations

import json
import math

import pytest

from conftest import TINY, load_benchmark

@pytest.fixture(scope="module")
def iterations():
    return load_benchmark("iterations")


def test_summary_pairs_by_seed_and_divides_the_baseline_updates(iterations):
    def run(policy, seed, acc, updates, batch):
        return {"policy": policy, "seed": seed, "final_test_acc": acc, "updates": updates,
                "final_global_batch": batch, "wall_s": 1.0}

    runs = [run("fixed", 0, 0.80, 600, 128), run("fixed", 1, 0.90, 600, 128),
            run("absa", 0, 0.82, 120, 1024), run("absa", 1, 0.86, 150, 512)]
    rows = {r["policy"]: r for r in iterations.summarize(runs, ["absa", "fixed"])}
    absa = rows["absa"]
    assert absa["updates_ratio_vs_fixed"] == pytest.approx(600 / 135)
    assert absa["acc_delta_vs_fixed_mean"] == pytest.approx(-0.01)  # +0.02 and -0.04, paired by seed
    assert absa["acc_delta_vs_fixed_std"] == pytest.approx(math.sqrt(2 * 0.03 ** 2))
    assert absa["final_global_batch"] == [512, 1024]
    assert iterations.schedule([128, 128, 256, 512, 512, 512]) == "128×2, 256, 512×3"
    reasons = ["batch 128 kept: first probe sets λ_ref = λ_max 66.6 (policy.eig_ratio=2 applies ...)",
               "batch 128→256: λ_max 37.3 ≤ λ_ref 77.9 / policy.eig_ratio=2",
               "batch 256→512: 3 epochs without growth (policy.duration=3); adversarial fraction 0.1→0.05 (λ_max)",
               "batch 512 kept: λ_max 31.4 > λ_ref 27.7 / policy.eig_ratio=2 (epoch 1 of policy.duration=3)"]
    assert iterations.growth_causes([{"policy_reason": r} for r in reasons]) == (1, 1)
    assert iterations.parse_args(["--seeds", "3", "4", "policy.max_global_batch=2048", "--epochs", "2"]).overrides \
        == ["policy.max_global_batch=2048"]


def test_tiny_comparison_end_to_end(iterations, tmp_path, capsys, one_thread):
    out = tmp_path / "results.json"
    argv = [*TINY, "epochs=1", "probe.max_iter=3", "--policies", "absa", "fixed", "--seeds", "0",
            "--data-root", str(tmp_path), "--runs-dir", str(tmp_path / "runs"), "--out", str(out)]
    assert iterations.main(argv) == 0
    printed = capsys.readouterr().out
    assert "c1-cifar10: skipped:" in printed and "cifar-10-batches-py" in printed
    result = json.loads(out.read_text())
    assert [s["preset"] for s in result["skipped"]] == ["c1-cifar10"]
    (quickstart,) = result["results"]
    runs = {r["policy"]: r for r in quickstart["runs"]}
    assert runs["fixed"]["updates"] == math.ceil(256 / 64)  # data.train_size / batch.global_batch_size, one epoch
    assert runs["absa"]["epochs"][0]["eigenvalue"] is not None  # absa probed
    for r in runs.values():
        assert r["updates"] == sum(math.ceil(256 / b) for b in r["batches"])
        assert f"| {r['policy']} | 0 | {100 * r['final_test_acc']:.2f} |" in printed
    assert quickstart["envelope"]["fixed"] == 4

    # --resume keeps the runs the file holds for the same config: nothing trains again
    saved = out.read_text()
    assert iterations.main([*argv, "--resume"]) == 0
    assert "(kept from --out)" in capsys.readouterr().out
    assert len(list((tmp_path / "runs").iterdir())) == 2
    assert json.loads(out.read_text())["results"][0]["runs"][0]["updates"] == json.loads(saved)["results"][0][
        "runs"][0]["updates"]
