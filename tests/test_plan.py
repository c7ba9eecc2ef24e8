"""`absa plan`: a dry run that imports no torch, answers fast, and whose numbers follow from the policy rules.

Reference: update counts computed by hand from the catalogue's ImageNet size (1,281,167) and floor division (an
epoch's tail that does not fill a global batch is dropped, never a short step).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from absa_cli.cli.app import app

from conftest import assert_user_error

runner = CliRunner()
IMAGENET = 1_281_167


def test_plan_resnet18_imagenet_json():
    result = runner.invoke(app, ["plan", "resnet18-imagenet", "--max-gpus", "64", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["num_train_samples"] == IMAGENET and plan["max_workers"] == 64
    assert plan["fixed_updates"] == 90 * (IMAGENET // 128)
    fastest, slowest = plan["cases"]["fastest"], plan["cases"]["slowest"]
    # fastest: λ_ref at epoch 1, a growth at every probe from epoch 2, up to the cap 16384 = 128 × 2^7
    assert [p["global_batch_size"] for p in fastest] == [128 * 2**k for k in range(8)]
    assert fastest[0]["first_epoch"] == 1 and fastest[0]["last_epoch"] == 2 and fastest[-1]["last_epoch"] == 90
    assert fastest[-1]["num_workers"] == 64 and fastest[-1]["per_worker_batch_size"] == 256
    # slowest: growth only every policy.duration = 10 epochs
    assert [p["first_epoch"] for p in slowest] == [1, 11, 21, 31, 41, 51, 61, 71]
    # each phase says why the policy set its batch: the curvature, or the fallback (which leaves λ_ref as it is)
    assert [p["growth"] for p in fastest] == [None] + ["curvature"] * 7
    assert [p["growth"] for p in slowest] == [None] + ["fallback"] * 7
    assert slowest[1]["why"] == "fallback: policy.duration=10, λ_ref kept"
    assert fastest[1]["why"] == "curvature: λ_max ≤ λ_ref / policy.eig_ratio=2"
    expected = sum(IMAGENET // p["global_batch_size"] * (p["last_epoch"] - p["first_epoch"] + 1)
                   for p in fastest)
    assert plan["updates"]["fastest"] == expected < plan["updates"]["slowest"] < plan["fixed_updates"]


def test_plan_fixed_policy_is_flat():
    plan = json.loads(runner.invoke(app, ["plan", "resnet20-cifar10", "policy.name=fixed", "--json"]).stdout)
    assert len(plan["cases"]["fastest"]) == len(plan["cases"]["slowest"]) == 1
    assert plan["updates"]["fastest"] == plan["fixed_updates"] == 90 * (50_000 // 128)


def test_plan_table_is_fast_and_imports_no_torch():
    code = ("import sys; from absa_cli.cli.app import main; sys.argv = ['absa', 'plan', 'resnet18-imagenet', "
            "'--max-gpus', '64']\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'plan imported torch'")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    assert "fewer than fixed" in done.stdout and "16,384" in done.stdout
    assert elapsed < 2.0, f"absa plan took {elapsed:.2f} s"


def test_plan_bad_input_exit_2():
    result = runner.invoke(app, ["plan", "resnet18-imagenet", "policy.growht=2"])
    assert result.exit_code == 2 and "did you mean 'policy.growth'" in result.stderr


def test_plan_answers_at_once_for_huge_worker_counts_and_refuses_huge_epoch_counts():
    # were a minute-long loop over every worker count up to --max-gpus, and 12 GB for epochs=1e8
    started = time.perf_counter()
    result = runner.invoke(app, ["plan", "quickstart", "--max-gpus", "1000000000", "--profile", H100])
    assert result.exit_code == 0, result.output
    assert "fewer than fixed" in result.stdout and time.perf_counter() - started < 5.0
    assert_user_error(runner.invoke(app, ["plan", "quickstart", "epochs=100000000"]),
                      "epochs must be at most 100,000, got 100,000,000")


def test_plan_refuses_a_cap_larger_than_the_training_set():
    result = runner.invoke(app, ["plan", "quickstart", "data.train_size=1000"])
    assert_user_error(result, "policy.max_global_batch=1024", "1000 training samples", "at most 1000")


def test_a_training_set_smaller_than_the_first_batch_gets_advice_that_works():
    """Lowering only the cap, as the cap's own message says, would meet "below batch.global_batch_size" next."""
    result = runner.invoke(app, ["plan", "quickstart", "data.train_size=100"])
    assert_user_error(result, "even the first global batch, batch.global_batch_size=128, is larger than the 100 "
                              "training samples",
                      "set batch.global_batch_size and policy.max_global_batch to at most 100")
    followed = runner.invoke(app, ["plan", "quickstart", "data.train_size=100", "batch.global_batch_size=100",
                                   "policy.max_global_batch=100"])
    assert followed.exit_code == 0, followed.output


@pytest.mark.parametrize("args, samples", [
    (["alexnet-svhn", "data.train_split=extra"], 531_131),
    (["alexnet-svhn", "data.train_split=train+extra"], 604_388),
    (["alexnet-svhn", "data.train_size=1000000"], 73_257),  # the loader keeps at most the split
    (["c1-cifar10", "data.train_size=20000"], 20_000),
    (["quickstart", "data.train_size=50000"], 50_000),  # a generated set makes as many as asked
])
def test_plan_counts_the_samples_the_run_would_train_on(args, samples):
    result = runner.invoke(app, ["plan", *args, "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["num_train_samples"] == samples
    assert plan["fixed_updates"] == plan["epochs"] * (samples // 128)


def test_plan_notes_batches_whose_epochs_drop_a_large_tail():
    plan = json.loads(runner.invoke(app, ["plan", "quickstart", "data.train_size=1500", "--json"]).stdout)
    assert [note.split(" every")[0] for note in plan["notes"]] == ["note: at global batch 256",
                                                                   "note: at global batch 512",
                                                                   "note: at global batch 1024"]
    assert "drops 476 of the 1500 training samples (32%" in plan["notes"][1]
    assert json.loads(runner.invoke(app, ["plan", "quickstart", "--json"]).stdout)["notes"] == []  # 8,192: none


H100 = str(__import__("pathlib").Path(__file__).resolve().parent.parent / "benchmarks" / "profiles"
           / "resnet18-imagenet-h100.json")


def test_plan_with_the_h100_profile_prints_times_and_the_comparison_fast_and_imports_no_torch():
    code = ("import sys; from absa_cli.cli.app import main; sys.argv = ['absa', 'plan', 'resnet18-imagenet', "
            f"'--max-gpus', '64', '--profile', {H100!r}]\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'plan imported torch'")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    out = " ".join(done.stdout.split())  # the table wraps at the terminal's width
    for text in ("Time, from the step-time model of resnet18", "worker-hours", "held idle",
                 "fixed, on its fastest worker count", "fixed-large", "× faster", "Profile sources"):
        assert text in out, (text, out)
    assert elapsed < 2.0, f"absa plan --profile took {elapsed:.2f} s"


def test_plan_says_slower_for_a_case_slower_than_fixed():
    from absa_cli.cli.plan import _versus

    assert (_versus(100, 50), _versus(100, 123.5), _versus(100, 100.2)) == ("2.00× faster", "1.24× slower", "the same")


def test_plan_time_in_json_follows_from_the_profile():
    result = runner.invoke(app, ["plan", "resnet18-imagenet", "--max-gpus", "64", "--profile", H100, "--json"])
    assert result.exit_code == 0, result.output
    time_ = json.loads(result.stdout)["time"]
    assert set(time_["cases"]) == {"fastest", "slowest", "fixed", "fixed-large"}
    large = time_["cases"]["fixed-large"]
    (phase,) = large["phases"]
    assert (phase["global_batch_size"], phase["num_workers"], phase["first_epoch"], phase["last_epoch"]) == \
        (16384, 64, 1, 90)
    assert large["worker_hours"] == pytest.approx(sum(p["seconds"] * p["num_workers"] for p in large["phases"]) / 3600)
    for case in time_["cases"].values():  # the total is the phases and the group's start
        assert case["seconds"] > sum(p["seconds"] for p in case["phases"]) > 0
        idle = sum(p["seconds"] * (64 - p["num_workers"]) for p in case["phases"]) / 3600
        assert case["idle_worker_hours"] == pytest.approx(idle)


def test_plan_without_a_profile_shows_no_time_and_says_how_to_get_one():
    result = runner.invoke(app, ["plan", "resnet18-imagenet", "--max-gpus", "64"])
    out = " ".join(result.stdout.split())
    assert result.exit_code == 0 and "give a step-time profile (--profile FILE, made by `absa calibrate PRESET`" in out
    assert "Time, from" not in out and " s a step" not in out
    plan = json.loads(runner.invoke(app, ["plan", "resnet18-imagenet", "--json"]).stdout)
    assert plan["time"] is None


def test_plan_profile_errors_are_one_line(tmp_path):
    assert_user_error(runner.invoke(app, ["plan", "quickstart", "--profile", str(tmp_path / "none.json")]),
                      "cannot read the profile")
    assert_user_error(runner.invoke(app, ["plan", "quickstart", "--profile", H100, "--from-run", "x"]),
                      "not both")
