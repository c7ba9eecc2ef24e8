"""benchmarks/iterations.py end to end on a tiny quickstart: the runs' updates equal the count the batch schedule
implies (full steps per epoch at each epoch's batch), an absa[...] variant runs with its overrides, the tables and
the JSON agree with the runs, each run's last checkpoint classifies the test set as its record says, and CIFAR-10 is
skipped with a message when --data-root does not hold it. The summary arithmetic (paired differences and their
test-sample error) is checked on scripted runs."""

from __future__ import annotations

import gzip
import json
import math
import re
import statistics
from pathlib import Path

import pytest

from conftest import TINY, load_benchmark

@pytest.fixture(scope="module")
def iterations():
    return load_benchmark("iterations")


def test_summary_pairs_by_seed_and_divides_the_baseline_updates(iterations):
    def run(policy, seed, acc, updates, batch, growths=()):
        epochs = [{"growth": cause, "growth_epochs_early": early} for cause, early in growths]
        return {"policy": policy, "seed": seed, "final_test_acc": acc, "updates": updates,
                "final_global_batch": batch, "wall_s": 1.0, "epochs": epochs}

    runs = [run("fixed", 0, 0.80, 600, 128), run("fixed", 1, 0.90, 600, 128),
            run("absa", 0, 0.82, 120, 1024, [("curvature", 2), (None, 0), ("fallback", 0), (None, 0)]),
            run("absa", 1, 0.86, 150, 512, [("curvature", 0), ("curvature", 1), (None, 0)])]
    rows = {r["policy"]: r for r in iterations.summarize(runs, ["absa", "fixed"])}
    absa = rows["absa"]
    assert absa["updates_ratio_vs_fixed"] == pytest.approx(600 / 135)
    assert absa["acc_delta_vs_fixed_mean"] == pytest.approx(-0.01)  # +0.02 and -0.04, paired by seed
    assert absa["acc_delta_vs_fixed_std"] == pytest.approx(math.sqrt(2 * 0.03 ** 2))
    assert absa["final_global_batch"] == [512, 1024]
    assert absa["growths"] == {"curvature_early": 2, "curvature_on_fallback_epoch": 1, "fallback": 1}
    assert "growths" not in rows["fixed"]
    assert "acc_delta_test_se" not in absa  # runs saved without the test samples' results

    # the test sample's error of the paired difference, from the samples two runs classify differently
    se, counts = iterations.paired_error(["1100", "1111"], ["1010", "0000"])
    assert counts == [(1, 1), (4, 0)]
    assert se == pytest.approx(math.sqrt((2 / 4 - 0) / 4 + (4 / 4 - 1) / 4) / 2)  # the second pair: no spread
    with pytest.raises(ValueError, match="tested on 3 and 4 samples"):
        iterations.paired_error(["110"], ["1010"])
    for r, correct in zip(runs, ["1100", "1000", "1110", "0000"]):
        r["test_correct"] = correct
    absa = {r["policy"]: r for r in iterations.summarize(runs, ["absa", "fixed"])}["absa"]
    assert absa["discordant"] == [(1, 0), (0, 1)]
    assert absa["acc_delta_test_se"] == pytest.approx(math.sqrt(2 * (1 / 4 - 1 / 16) / 4) / 2)
    assert iterations.summary_table([absa]).splitlines()[-1].endswith(f"| {100 * absa['acc_delta_test_se']:.2f} "
                                                                      f"| 1 / 0, 0 / 1 |")
    assert iterations.schedule([128, 128, 256, 512, 512, 512]) == "128×2, 256, 512×3"

    # the claim: the ratio's verdict is the ratio's; a stopped seed fails the claim on a line of its own
    envelope = {"fixed": 600, "fastest": 60, "slowest": 150}
    stopped = [{**run("absa", 2, 0.1, 40, 1024), "stopped": "training collapsed in epoch 3: ..."}]

    def claim(more_runs):
        return iterations.claim_lines(iterations.summarize(runs + more_runs, ["absa", "fixed"]), envelope)

    assert claim([])[0].startswith("- absa: 4.44× fewer updates than fixed (below the claimed ≥ 5×), ")
    assert claim(stopped)[0] == ("- absa: seed 2 stopped (diverged or collapsed): below the claim, which asks for "
                                 "equal accuracy")
    assert claim(stopped)[1].startswith("- absa: 4.44× fewer updates than fixed on the 2 seeds that finished "
                                        "(below the claimed ≥ 5×), ")
    runs[2]["updates"] = runs[3]["updates"] = 100
    assert claim(stopped)[1].startswith("- absa: 6.00× fewer updates than fixed on the 2 seeds that finished "
                                        "(meets the claimed ≥ 5×), final test accuracy -1.00 ± 4.24 pp vs fixed")
    records = [{"growth": None, "growth_epochs_early": 0}, {"growth": "curvature", "growth_epochs_early": 1},
               {"growth": "fallback", "growth_epochs_early": 0}, {"growth": "curvature", "growth_epochs_early": 0},
               {"growth": "curvature", "growth_epochs_early": 2}, {"growth": "fallback", "growth_epochs_early": 0}]
    assert iterations.growth_causes(records) == (2, 1, 1)  # the last epoch's decision trains nothing: not counted
    with pytest.raises(ValueError, match="no `growth` field"):
        iterations.growth_causes([{"policy_reason": "batch 128→256: ..."}, {}])
    args = iterations.parse_args(["--seeds", "3", "4", "policy.max_global_batch=2048", "--epochs", "2",
                                  "--policies", "fixed", "--variant", "cold: probe.warm_start=false probe.data=fresh"])
    assert args.overrides == ["policy.max_global_batch=2048"]
    assert args.contenders == [("fixed", ["policy.name=fixed"]),
                               ("absa[cold]", ["policy.name=absa", "probe.warm_start=false", "probe.data=fresh"])]
    assert iterations.is_adaptive("absa[cold]") and not iterations.is_adaptive("fixed-large")


def test_tiny_comparison_end_to_end(iterations, tmp_path, capsys, one_thread):
    out = tmp_path / "results.json"
    argv = [*TINY, "epochs=2", "probe.max_iter=3", "--policies", "absa", "fixed", "--seeds", "0",
            "--variant", "fresh: probe.data=fresh",
            "--data-root", str(tmp_path), "--runs-dir", str(tmp_path / "runs"), "--out", str(out)]
    assert iterations.main(argv) == 0
    printed = capsys.readouterr().out
    assert "c1-cifar10: skipped:" in printed and "cifar-10-batches-py" in printed
    result = json.loads(out.read_text())
    assert [s["preset"] for s in result["skipped"]] == ["c1-cifar10"]
    (quickstart,) = result["results"]
    runs = {r["policy"]: r for r in quickstart["runs"]}
    assert runs["fixed"]["updates"] == 2 * (256 // 64)  # data.train_size / batch.global_batch_size, two epochs
    assert runs["absa"]["epochs"][0]["eigenvalue"] is not None  # absa probed
    assert runs["absa[fresh]"]["epochs"][0]["eigenvalue"] != runs["absa"]["epochs"][0]["eigenvalue"]  # other samples
    for r in runs.values():
        assert r["updates"] == sum(256 // b for b in r["batches"])
        # the last checkpoint classified the test set again: as many correct as the last epoch recorded
        assert len(r["test_correct"]) == 128 and r["test_correct"].count("1") == round(128 * r["final_test_acc"])
    from absa_cli.run.rundir import RunDir

    fixed = RunDir.open(tmp_path / "runs", runs["fixed"]["run_id"])
    with pytest.raises(RuntimeError, match="where its last epoch recorded"):  # a checkpoint that is not the run's end
        iterations.test_correct(fixed.load_config(), fixed, runs["fixed"]["final_test_acc"] + 2 / 128)
        assert f"| {r['policy']} | 0 | {100 * r['final_test_acc']:.2f} |" in printed
    assert quickstart["envelope"]["fixed"] == 8

    # --resume keeps the runs the file holds for the same config and variant overrides: nothing trains again, and a
    # variant whose overrides changed is run anew
    saved = out.read_text()
    assert iterations.main([*argv, "--resume"]) == 0
    assert "(kept from --out)" in capsys.readouterr().out
    assert len(list((tmp_path / "runs").iterdir())) == 3
    assert json.loads(out.read_text())["results"][0]["runs"][0]["updates"] == json.loads(saved)["results"][0][
        "runs"][0]["updates"]
    changed = [*argv[:argv.index("fresh: probe.data=fresh")], "fresh: probe.data=fresh probe.seed=3",
               *argv[argv.index("fresh: probe.data=fresh") + 1:], "--resume", "--policies", "fixed"]
    assert iterations.main(changed) == 0
    printed = capsys.readouterr().out
    assert "fixed seed 0 (kept from --out)" in printed and "absa[fresh] seed 0 (kept" not in printed
    assert len(list((tmp_path / "runs").iterdir())) == 4  # the changed variant trained again


def test_tables_from_merges_files_run_side_by_side(iterations, tmp_path, capsys):
    def saved(name, runs, complete=True):
        measured = {"preset": "quickstart", "header": "## quickstart", "config": "epochs: 30\n",
                    "envelope": {"fastest": 100, "slowest": 500, "fixed": 600},
                    "policies": list(dict.fromkeys(r["policy"] for r in runs)), "runs": runs}
        path = tmp_path / name
        path.write_text(json.dumps({"machine": {"cpu": name}, "complete": complete, "results": [measured],
                                    "skipped": []}))
        return path

    def run(policy, seed, acc, updates):
        return {"policy": policy, "seed": seed, "final_test_acc": acc, "best_test_acc": acc, "updates": updates,
                "final_global_batch": 128, "batches": [128], "wall_s": 1.0, "probe_s": 0.0,
                "epochs": [{"growth": None, "growth_epochs_early": 0, "train_loss": 0.5}],
                "extra": [f"policy.name={policy}"]}

    seed0 = saved("a.json", [run("absa", 0, 0.80, 120), run("fixed", 0, 0.81, 600)])
    seed1 = saved("b.json", [run("absa", 1, 0.90, 100), run("fixed", 1, 0.92, 600)], complete=False)
    assert iterations.main(["--tables-from", str(seed0), str(seed1)]) == 0
    printed = capsys.readouterr().out
    assert '"cpu": "a.json"' in printed and '"cpu": "b.json"' in printed
    assert "incomplete" in printed  # one of the files was left by a stopped benchmark
    # one table over both files: two seeds per policy, the ratio over all four runs (600 / 110), paired deltas
    assert "| absa | 2 | 85.00 ± 7.07 | -1.50 ± 0.71 | 110 ± 14 | 5.45× |" in printed
    assert "| fixed | 2 | 86.50 ± 7.78 | — | 600 ± 0 | 1.00× |" in printed

    assert iterations.main(["--tables-from", str(seed0), str(seed0)]) == 2
    assert "absa seed 0 of quickstart is in more than one file" in capsys.readouterr().err
    missing = tmp_path / "missing.json"
    assert iterations.main(["--tables-from", str(seed0), str(missing)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {missing}: not an iterations.py --out file")
    packed, cut = tmp_path / "a.json.gz", tmp_path / "cut.json.gz"  # gzipped files are read as they are
    packed.write_bytes(gzip.compress(seed0.read_bytes()))
    cut.write_bytes(packed.read_bytes()[:-20])
    assert iterations.main(["--tables-from", str(packed), str(seed1)]) == 0
    assert "| absa | 2 | 85.00 ± 7.07 | -1.50 ± 0.71 | 110 ± 14 | 5.45× |" in capsys.readouterr().out
    assert iterations.main(["--tables-from", str(cut)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {cut}: not an iterations.py --out file")


def test_a_run_that_diverges_is_recorded_as_stopped_and_the_others_go_on(iterations, tmp_path, capsys, one_thread):
    """A contender that blows up is a result (the claim asks for equal accuracy), not a crash of the benchmark: it
    is recorded with the stop's message, left out of the means, named in the tables, and the next run still runs."""
    out = tmp_path / "results.json"
    argv = [*TINY, "epochs=2", "model.width=0.1", "--policies", "fixed", "--seeds", "0", "1",
            "--variant", "hot: optim.lr=1e6", "--runs-dir", str(tmp_path / "runs"), "--out", str(out)]
    assert iterations.main(argv) == 0
    printed = capsys.readouterr().out
    runs = json.loads(out.read_text())["results"][0]["runs"]
    assert [(r["policy"], r["seed"], r["stopped"] is None) for r in runs] == [
        ("fixed", 0, True), ("absa[hot]", 0, False), ("fixed", 1, True), ("absa[hot]", 1, False)]
    assert all(r["stopped"].startswith("training diverged") and r["stop_kind"] == "diverged" for r in runs
               if r["stopped"])
    assert [r["test_correct"] is None for r in runs] == [False, True, False, True]  # nothing to classify with
    # the epoch that stopped trained at a batch no record names: it is the schedule's last
    assert all((r["batches"], r["final_global_batch"]) == ([64], 64) for r in runs if r["stopped"])
    assert "| absa[hot] | 0 (+2 stopped) | — |" in printed
    assert "| absa[hot] | 0 | diverged in epoch 1 | 0.00 | — | 0 |" in printed
    assert "[2/4] absa[hot] seed 0: training diverged: " in printed
    assert "- absa[hot]: seeds 0, 1 stopped (diverged or collapsed)" in printed
    statuses = {json.loads((d / "run.json").read_text())["status"] for d in (tmp_path / "runs").iterdir()}
    assert statuses == {"finished", "diverged"}
    epochs = [{"growth": "curvature", "growth_epochs_early": 1, "train_loss": 0.4},
              {"growth": "fallback", "growth_epochs_early": 0, "train_loss": 0.9}]
    collapsed = {"policy": "absa", "seed": 0, "final_test_acc": 0.8, "best_test_acc": 0.85, "updates": 96,
                 "final_global_batch": 256, "batches": [128, 256], "wall_s": 1.0, "probe_s": 0.5, "epochs": epochs,
                 "stopped": "training collapsed in epoch 3: the training loss averaged 8.2 ..."}
    # the growth decided after the last recorded epoch trained in the epoch that collapsed: it is counted
    assert "| absa | 0 | collapsed in epoch 3 (80.00 after 2) | 85.00 | 0.9 | 96 | 256 | 128, 256 | 1 / 0 / 1 |" \
        in iterations.seeds_table([collapsed], ["absa"])  # a file from before runs recorded how they stopped
    # the recorded kind decides, not the message's wording
    reworded = {**collapsed, "stopped": "training stopped in epoch 3: the loss rose", "stop_kind": "collapsed"}
    assert "| absa | 0 | collapsed in epoch 3 (80.00 after 2) |" in iterations.seeds_table([reworded], ["absa"])


def test_the_documented_recheck_tables_are_the_committed_runs(iterations, capsys):
    """docs/benchmarks.md's `policy.recheck=1` tables come from the runs saved in benchmarks/results/ (gzipped --out
    files, read by --tables-from as they are), beside the `fixed` runs saved there too: each seed's row and its
    paired difference, the rechecks that ran and those that refuted the drop (counted from the epoch records), the
    summary's mean updates and growth causes, and the test-sample standard error from both runs' checkpoints."""
    root = Path(__file__).resolve().parent.parent
    results = root / "benchmarks" / "results"
    files = sorted(results.glob("recheck-90ep-seeds*.json.gz")) + sorted(results.glob("fixed-90ep-seeds*.json.gz"))
    assert len(files) == 4
    assert iterations.main(["--tables-from", *map(str, files)]) == 0
    printed = capsys.readouterr().out
    summary_row = next(line for line in printed.splitlines() if line.startswith("| absa[ref-recheck1] | 6 | "))
    assert summary_row.startswith("| absa[ref-recheck1] | 6 | 95.42 ± 0.59 | -0.05 ± 0.59 | 1009 ± 106 | 5.71× | 2048 "
                                  "| 14 / 1 / 9 |"), summary_row
    se, discordant = summary_row.split("|")[-3:-1]
    (measured,) = iterations.merge_saved(files)["results"]
    runs = sorted((r for r in measured["runs"] if r["policy"] == "absa[ref-recheck1]"), key=lambda r: r["seed"])
    assert [r["seed"] for r in runs] == list(range(6)) and not any(r.get("stopped") for r in runs)
    fixed_runs = sorted((r for r in measured["runs"] if r["policy"] == "fixed"), key=lambda r: r["seed"])
    assert [r["seed"] for r in fixed_runs] == list(range(6)) and all(r["test_correct"] for r in fixed_runs)
    fixed = [100 * r["final_test_acc"] for r in fixed_runs]
    doc = (root / "docs" / "benchmarks.md").read_text()
    # the `fixed` runs they are paired with, as the text lists them: the saved ones
    listed = re.search(r"paired with that model's `fixed` runs above \(([\d.,\s]+);", doc)[1]
    assert [float(a) for a in listed.split(",")] == [round(a, 2) for a in fixed]
    prose = " ".join(doc.split())
    assert f"own error of the mean paired difference is **{float(se):.2f} pp**" in prose
    assert f"only in `fixed`, seeds 0–5: {discordant.strip()})" in prose
    rows = {cells[1]: cells for cells in ([c.strip() for c in line.split("|")[1:-1]] for line in doc.splitlines()
                                          if line.startswith("| absa[ref-recheck1] | "))}
    ran = refuted = 0
    for run in runs:
        rechecked = [e for e in run["epochs"] if e["eigenvalue_rechecks"]]
        ran_here = sum(len(e["eigenvalue_rechecks"]) for e in rechecked)
        refuted_here = sum(e["growth"] != "curvature" for e in rechecked)  # a confirmed drop grows by the curvature
        ran, refuted = ran + ran_here, refuted + refuted_here
        causes = " / ".join(map(str, iterations.growth_causes(run["epochs"])))
        cells = rows[str(run["seed"])]
        assert (cells[2], *cells[4:9], cells[10]) == (
            f"{100 * run['final_test_acc']:.2f}", f"{100 * run['best_test_acc']:.2f}",
            iterations._loss(run["epochs"][-1]["train_loss"]), str(run["updates"]), iterations.schedule(run["batches"]),
            causes, f"{run['probe_s']:.1f}"), run["seed"]
        assert cells[9] == f"{ran_here} / {refuted_here}", run["seed"]
        assert cells[3] == f"{100 * run['final_test_acc'] - fixed[run['seed']]:+.1f}".replace("-", "−"), run["seed"]
    assert (ran, refuted) == (34, 19) and "Of 34 rechecks, 19 refuted the drop" in doc
    summary = next(line for line in doc.splitlines() if line.startswith("| + a drop rechecked at once on new samples"))
    deltas = [100 * run["final_test_acc"] - fixed[run["seed"]] for run in runs]
    updates = sum(run["updates"] for run in runs) / len(runs)
    assert f"| {statistics.mean(deltas):.2f} ± {statistics.stdev(deltas):.2f} (".replace("-", "−") in summary
    assert f"| {updates:,.0f} | {measured['envelope']['fixed'] / updates:.2f}× |" in summary
    assert summary.endswith("| 14 / 1 / 9 |")
