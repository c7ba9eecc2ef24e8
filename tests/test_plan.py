"""`absa plan`: a dry run that imports no torch, answers fast, and whose numbers follow from the policy rules.

Reference: update counts computed by hand from the catalogue's ImageNet size (1,281,167) and floor division (an
epoch's tail that does not fill a global batch is dropped, never a short step).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

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


def test_plan_piped_keeps_every_cell_whole():
    """On a pipe or in a file (no terminal, no $COLUMNS) the table is not cut at 80 columns: each phase's reason is
    on its row, whole, as --json gives it."""
    args = ["plan", "resnet18-imagenet", "--max-gpus", "64"]
    plan = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    out = runner.invoke(app, args, env={"COLUMNS": None}).stdout
    rows = [line for line in out.splitlines() if line.startswith("│")]
    phases = plan["cases"]["fastest"] + plan["cases"]["slowest"]
    assert len(rows) == len(phases)  # one line per phase: nothing wrapped
    for row, phase in zip(rows, phases):
        assert row.split("│")[-2].strip() == phase["why"]


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
    assert_user_error(result, "policy.max_global_batch=1024", "1,000 training samples", "at most 1000")


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


def test_plan_notes_lr_decays_and_a_warm_up_the_epochs_never_reach():
    """A preset shortened with epochs= kept its decays, silently never applied (`epochs=10` of resnet18-imagenet,
    which decays after 30, 60 and 80, trains at the full LR throughout)."""
    def notes(*overrides: str) -> list[str]:
        return json.loads(runner.invoke(app, ["plan", "resnet18-imagenet", *overrides, "--json"]).stdout)["notes"]

    assert notes("epochs=20")[0] == ("note: the LR decays after epochs 30, 60 and 80 (optim.decay_epochs=[30, 60, "
                                     "80]) never come in 20 epochs; set optim.decay_epochs for a shorter run")
    assert notes("epochs=61")[0].startswith("note: the LR decay after epoch 80 (optim.decay_epochs=[30, 60, 80]) "
                                            "never comes in 61 epochs")
    assert not [note for note in notes("epochs=81") if "decay" in note]  # the last one comes before epoch 81
    assert notes("epochs=3", "optim.warmup_epochs=5", "optim.decay_epochs=[]") == [
        "note: optim.warmup_epochs=5 is longer than the run (3 epochs): the LR never reaches its full value"]


def test_plan_notes_batches_whose_epochs_drop_a_large_tail():
    plan = json.loads(runner.invoke(app, ["plan", "quickstart", "data.train_size=1500", "--json"]).stdout)
    assert [note.split(" every")[0] for note in plan["notes"]] == ["note: at global batch 256",
                                                                   "note: at global batch 512",
                                                                   "note: at global batch 1024"]
    assert "drops 476 of the 1,500 training samples (32%" in plan["notes"][1]
    assert json.loads(runner.invoke(app, ["plan", "quickstart", "--json"]).stdout)["notes"] == []  # 8,192: none


def test_a_probe_larger_than_the_training_set_is_noted():
    notes = json.loads(runner.invoke(app, ["plan", "quickstart", "data.train_size=512", "probe.batch_size=1024",
                                           "policy.max_global_batch=512", "--json"]).stdout)["notes"]
    assert ("note: the curvature probe asks for probe.batch_size × probe.num_batches = 1,024 samples, more than the "
            "512 training samples: it reads all 512") in notes
    assert not json.loads(runner.invoke(app, ["plan", "quickstart", "data.train_size=512", "probe.batch_size=1024",
                                              "policy.max_global_batch=512", "policy.name=fixed",
                                              "--json"]).stdout)["notes"]  # fixed never probes


def test_a_train_size_above_the_split_is_noted_where_it_was_silently_cut():
    plan = json.loads(runner.invoke(app, ["plan", "alexnet-svhn", "data.train_size=1000000", "--json"]).stdout)
    assert plan["notes"][0] == ("note: data.train_size=1000000 is more than the 73,257 samples svhn's train split "
                                "holds: all 73,257 are used")
    assert not any("train_size" in note for note in json.loads(runner.invoke(
        app, ["plan", "alexnet-svhn", "data.train_size=70000", "--json"]).stdout)["notes"])


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


def test_plan_time_counts_the_rechecks_of_every_probe_that_shows_the_drop():
    """policy.recheck=2: in the fastest case every probe after the first shows the drop and is probed twice more
    (the probes after epochs 2-8, each followed by a growth, the last one to the cap 16384 = 128 × 2^7); the slowest
    case, an upper bound on time, is charged two rechecks at every probe after the first too (each drop refuted by
    its last recheck); fixed never probes."""
    def cases(*overrides: str) -> dict:
        result = runner.invoke(app, ["plan", "resnet18-imagenet", "--max-gpus", "64", "--profile", H100, *overrides,
                                     "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["time"]["cases"]

    plain, rechecked = cases(), cases("policy.recheck=2")
    probe_s = json.loads(Path(H100).read_text())["probe_s"]
    assert probe_s > 0
    assert rechecked["fastest"]["seconds"] - plain["fastest"]["seconds"] == pytest.approx(7 * 2 * probe_s)
    probed = sum(min(p["last_epoch"], 89) - p["first_epoch"] + 1 for p in plain["slowest"]["phases"]
                 if p["global_batch_size"] < 16384)  # below the cap, never after the last epoch (90)
    assert probed > 8
    assert rechecked["slowest"]["seconds"] - plain["slowest"]["seconds"] == pytest.approx((probed - 1) * 2 * probe_s)
    for name in ("fixed", "fixed-large"):
        assert rechecked[name]["seconds"] == pytest.approx(plain[name]["seconds"])


def test_plan_time_of_a_baseline_policy_charges_no_probe():
    """policy.name=fixed: its schedule is both envelopes, timed as its epochs without a probe (nor a recheck)."""
    from absa_cli import config as config_mod
    from absa_cli.decide.timeline import time_cases, time_schedule
    from absa_cli.run import profile as profiles

    model = profiles.load(Path(H100))
    for overrides in (["policy.name=fixed"], ["policy.name=fixed", "policy.recheck=3"]):
        config = config_mod.load("resnet18-imagenet", overrides)
        batches = [config.batch.global_batch_size] * config.epochs
        cases = time_cases(config, model, {"fastest": batches, "slowest": batches}, 1_281_167, 50_000, 64)
        unprobed = time_schedule(config, model, batches, 1_281_167, 50_000, 64, probes=False)
        assert cases["fastest"]["seconds"] == pytest.approx(unprobed["seconds"]) == \
            pytest.approx(cases["slowest"]["seconds"]), overrides
    assert model.probe_s > 0  # a probe charged would show


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


@pytest.mark.parametrize("key, value, says", [
    ("allreduce_bandwidth", 0, "allreduce_bandwidth is 0.0"),  # was a ZeroDivisionError traceback (here and mid-run)
    ("allreduce_bandwidth", -5, "allreduce_bandwidth is -5.0"),  # were negative times, printed as a plan
    ("compute_s", [-1, -1], "compute_s is [-1.0, -1.0]"),
    ("epoch_s", float("nan"), "epoch_s is nan"),
])
def test_a_profile_with_impossible_numbers_is_one_line(tmp_path, key, value, says):
    damaged = tmp_path / "damaged.json"
    damaged.write_text(json.dumps({**json.loads(open(H100).read()), key: value}))
    assert_user_error(runner.invoke(app, ["plan", "resnet18-imagenet", "--max-gpus", "8", "--profile", str(damaged)]),
                      f"the profile {damaged} is damaged ({says}, which no timing gives)")


def test_a_profile_made_on_one_worker_is_noted_where_more_workers_are_planned(tmp_path):
    """It timed no all-reduce (bandwidth null): its times for 2+ workers leave the communication out, and nothing
    said so (review)."""
    single = tmp_path / "single.json"
    single.write_text(json.dumps({**json.loads(open(H100).read()), "allreduce_bandwidth": None,
                                  "allreduce_bandwidth_inter": None}))
    args = ["plan", "resnet18-imagenet", "--profile", str(single), "--json"]
    many = json.loads(runner.invoke(app, [*args, "--max-gpus", "8"]).stdout)["time"]["note"]
    assert many == ("note: the profile timed no all-reduce (it was made on one worker): its times for 2 to 8 workers "
                    "leave the communication out; for them make one with `absa calibrate resnet18-imagenet "
                    "--max-gpus 8`")
    assert json.loads(runner.invoke(app, [*args, "--max-gpus", "1"]).stdout)["time"]["note"] is None
    assert json.loads(runner.invoke(app, ["plan", "resnet18-imagenet", "--profile", H100, "--max-gpus", "8",
                                          "--json"]).stdout)["time"]["note"] is None  # timed on 64 H100s


# ------------------------------------------------------------------------------------ the LR, as the run gets it

def _driven(config, eigenvalues, num_samples):
    """Per epoch, the batch, the LR of its first and last step and the highest of its steps, from a policy driven as
    the controller drives it: ``lr`` at each step's first sample over the training set, then ``observe`` (the
    probe's λ only where the last decision asked for one)."""
    from absa_cli.decide.geometry import steps_in_epoch
    from absa_cli.decide.policy import EpochMeasurements, make_policy

    policy = make_policy(config)
    decision, epochs = policy.initial(), []
    for epoch in range(config.epochs):
        batch = decision.global_batch_size
        steps = steps_in_epoch(num_samples, batch)
        lrs = [policy.lr(epoch + step * batch / num_samples) for step in range(steps)]
        epochs.append((batch, lrs[0], lrs[-1], max(lrs)))
        eig = eigenvalues[epoch] if decision.probe_next else None
        decision = policy.observe(EpochMeasurements(epoch + 1, config.epochs, eig))
    return epochs


@pytest.mark.parametrize("overrides", [
    ["policy.name=fixed-large", "epochs=3", "data.train_size=1000", "policy.max_global_batch=256"],  # the review's
    ["policy.name=fixed-large", "optim.warmup_epochs=2"],
    ["policy.name=fixed", "optim.warmup_epochs=3"],
    ["policy.name=absa", "policy.lr_ramp_epochs=1.5"],
    ["policy.name=abs", "policy.lr_ramp_epochs=1", "optim.warmup_epochs=2", "optim.lr_scaling=sqrt"],
    ["policy.name=absa"],
    ["policy.name=fixed-large"],  # warms up to 0.4, decays at epoch 8: the peak is neither end (review)
    ["policy.name=absa", "policy.lr_ramp_epochs=2"],
])
def test_plan_shows_the_lr_the_policy_gives_the_run_at_each_phase_start_and_end(overrides):
    """Was ``lr_at(config.optim, batch, epoch)``: fixed-large's LR scaled to the cap from the first step (the run warms
    up from the unscaled optim.lr), and after a growth with a ramp the new batch's LR (the run starts from the old)."""
    from absa_cli import config as config_mod

    config = config_mod.load("quickstart", overrides)
    plan = json.loads(runner.invoke(app, ["plan", "quickstart", *overrides, "--json"]).stdout)
    samples = plan["num_train_samples"]
    falling = [config.policy.eig_ratio ** -k for k in range(config.epochs)]  # the fastest case: every probe halves
    for name, eigenvalues in (("fastest", falling), ("slowest", [1.0] * config.epochs)):
        run, phases = _driven(config, eigenvalues, samples), plan["cases"][name]
        assert [p["global_batch_size"] for p in phases] == [run[p["first_epoch"] - 1][0] for p in phases]
        assert [p["lr"] for p in phases] == pytest.approx([run[p["first_epoch"] - 1][1] for p in phases], rel=1e-12)
        assert [p["lr_last"] for p in phases] == pytest.approx([run[p["last_epoch"] - 1][2] for p in phases],
                                                               rel=1e-12)
        assert [p["lr_peak"] for p in phases] == pytest.approx(
            [max(run[e][3] for e in range(p["first_epoch"] - 1, p["last_epoch"])) for p in phases], rel=1e-12)


def test_plan_of_fixed_large_names_its_batch_field_and_warm_up():
    args = ["plan", "quickstart", "policy.name=fixed-large", "epochs=3", "data.train_size=1000",
            "model.width=0.02", "policy.max_global_batch=256"]
    (phase,) = json.loads(runner.invoke(app, [*args, "--json"]).stdout)["cases"]["fastest"]
    # the run's metrics.jsonl: lr 0.05512, 0.06512, 0.07512 (each epoch's last step, 0.05 + 0.05 · progress / 5)
    assert phase["lr"] == 0.05 and phase["why"] == "start (policy.max_global_batch)"
    assert phase["lr_last"] == pytest.approx(0.05 + 0.05 * (2 + 512 / 1000) / 5)
    out = " ".join(runner.invoke(app, args, env={"COLUMNS": "200"}).stdout.split())
    assert "LR first (→ peak) → last step" in out and "0.05 → 0.07512" in out
    assert "LR warm-up from optim.lr=0.05 over 5 epochs" in out  # the policy's own start, as the run prints it
    peaked = runner.invoke(app, ["plan", "quickstart", "policy.name=fixed-large"], env={"COLUMNS": "200"}).stdout
    assert "0.05 → 0.4 → 0.08" in " ".join(peaked.split())  # warm-up to 0.4, then the decay at epoch 8


@pytest.mark.slow
def test_plan_lr_matches_a_real_fixed_large_run(tmp_path):
    """The last epoch's recorded LR (its last step's) is the plan's last LR, from a tiny real run."""
    import io

    from absa_cli import config as config_mod
    from absa_cli.driver.controller import Controller
    from absa_cli.driver.local_group import LocalGroup
    from absa_cli.run.metrics import Console
    from absa_cli.run.rundir import RunDir

    overrides = ["policy.name=fixed-large", "epochs=3", "data.train_size=1000", "data.test_size=64",
                 "model.width=0.02", "policy.max_global_batch=256", "cluster.max_workers=1"]
    config = config_mod.load("quickstart", overrides)
    run = RunDir.create(tmp_path / "runs", config)
    Controller(config, run, LocalGroup(config), Console(stream=io.StringIO(), force_plain=True)).train()
    recorded = [r["lr"] for r in run.records("epoch")]
    (phase,) = json.loads(runner.invoke(app, ["plan", "quickstart", *overrides, "--json"]).stdout)["cases"]["fastest"]
    assert recorded == pytest.approx([0.05512, 0.06512, 0.07512]) and phase["lr_last"] == pytest.approx(recorded[-1])


# --------------------------------------------------------------------------- a profile of another model or dataset

def _profile(tmp_path, timed: str) -> str:
    from absa_cli.decide.throughput import StepModel
    from absa_cli.run import profile as profiles

    path = tmp_path / "p.json"
    profiles.save(StepModel(model=timed, device="cpu", gradient_bytes=4_000, compute_s=(1e-3, 1e-4),
                            allreduce_bandwidth=1e9), path)  # timed on two workers
    return str(path)


def test_plan_notes_a_profile_of_another_model_width_or_dataset(tmp_path):
    """A note, not a refusal: a profile may be reused knowingly, but never silently."""
    path = _profile(tmp_path, "c1 (width 0.02) on shapes")
    result = runner.invoke(app, ["plan", "quickstart", "model.width=0.5", "epochs=4", "--profile", path],
                           env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stdout.splitlines() if line.startswith("note: the profile")]
    assert notes == ["note: the profile times c1 (width 0.02) on shapes, but this config trains c1 (width 0.5) on "
                     "shapes: its wall times are estimates for another model; for this one make a profile with "
                     "`absa calibrate quickstart model.width=0.5`"]
    assert "Time, from" in result.stdout  # the times are still shown
    plan = json.loads(runner.invoke(app, ["plan", "c1-cifar10", "--profile", path, "--json"]).stdout)
    assert "trains c1 (width 1) on cifar10" in plan["time"]["note"] and "`absa calibrate c1-cifar10`" in \
        plan["time"]["note"]


def test_plan_with_a_matching_profile_has_no_note(tmp_path):
    path = _profile(tmp_path, "c1 (width 0.25) on shapes")
    result = runner.invoke(app, ["plan", "quickstart", "model.width=0.25", "--profile", path, "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["time"]["note"] is None
    assert "note: the profile" not in runner.invoke(app, ["plan", "quickstart", "model.width=0.25", "--profile",
                                                          path]).stdout
