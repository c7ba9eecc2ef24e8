"""`absa calibrate`: a profile measured on real workers (one in this process; two Ray actors on the session
cluster) or fitted from a finished run's records, written where asked, loadable, and used by `absa plan`; bad
input is one line."""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from absa_cli import config as config_mod
from absa_cli.cli.app import app
from absa_cli.cli.calibrate import profile_from_run
from absa_cli.run import profile as profiles
from absa_cli.driver.controller import Controller
from absa_cli.driver.local_group import LocalGroup
from absa_cli.run.metrics import Console
from absa_cli.run.rundir import RunDir
from absa_cli.worker.accel import device_name

from conftest import TINY, assert_user_error

runner = CliRunner()
SMALL = ["data.train_size=256", "data.test_size=64", "batch.per_worker_max=32", "policy.max_global_batch=128",
         "probe.max_iter=3"]


def test_calibrate_one_local_worker_writes_a_profile_plan_can_use(tmp_path):
    path = tmp_path / "q.json"
    result = runner.invoke(app, ["calibrate", "quickstart", *SMALL, "--local", "-o", str(path)])
    assert result.exit_code == 0, result.output
    assert f"profile: {path}" in result.stdout and "use it: absa plan PRESET --profile" in result.stdout
    assert not re.search(r"\de[-+]?\d", result.stdout), result.stdout  # a probe of 6 µs printed `6.08e-06 s`
    assert re.search(r"evaluation [\d.]+ (ns|µs|ms) a test sample", result.stdout), result.stdout
    model = profiles.load(path)
    assert model.compute_s[1] > 0 and model.eval_s_per_sample > 0 and model.probe_s > 0 and model.start_s >= 0
    assert model.allreduce_bandwidth == float("inf")  # one worker: no all-reduce was timed
    assert "absa calibrate quickstart" in model.sources[0]
    plan = runner.invoke(app, ["plan", "quickstart", "--profile", str(path), "--json"])
    assert json.loads(plan.stdout)["time"]["cases"]["fixed"]["seconds"] > 0


@pytest.mark.parametrize(("seconds", "reads"), [
    (0, "0 s"), (4.12e-7, "412 ns"), (6.08e-6, "6.08 µs"), (0.0352, "35.2 ms"), (-2e-5, "-20 µs"), (4.5, "4.5 s"),
    (599, "599 s"), (720, "12 min"), (11160, "3.1 h"),
    (0.9996, "1 s"), (9.9996e-4, "1 ms"), (9.996e-7, "1 µs"), (3.6e6, "1,000 h"),  # as rounded: not "1e+03 ms"
])
def test_durations_read_in_the_unit_that_fits(seconds, reads):
    from absa_cli.errors import duration

    assert duration(seconds) == reads


def test_sizes_and_bandwidths_read_without_an_exponent():
    """A gradient of 1.2 GB printed `1.23e+03 MB`."""
    from absa_cli.cli.calibrate import _digits

    assert [_digits(value) for value in (46.21, 999.4, 999.6, 1234.5, 0.000123)] == ["46.2", "999", "1,000", "1,234",
                                                                                    "0.000123"]


@pytest.mark.slow
def test_calibrate_two_ray_workers_times_the_all_reduce(tmp_path, ray_cluster):
    path = tmp_path / "q2.json"
    result = runner.invoke(app, ["calibrate", "quickstart", *SMALL, "--max-gpus", "2", "-o", str(path)])
    assert result.exit_code == 0, result.output
    assert "2 workers × 32" in result.stderr
    model = profiles.load(path)
    assert 0 < model.allreduce_bandwidth < float("inf")  # a real gloo all-reduce between two actors
    assert model.device == device_name(torch.device("cpu"))  # the workers' own, from their handshake


def _parameters_of(config) -> int:
    """The parameters of ``config``'s model, counted here from its definition."""
    from absa_cli import catalog
    from absa_cli.models import build_model

    spec = catalog.dataset_spec(config.data.name)
    model = build_model(config.model.name, spec.num_classes, spec.image_size, width=config.model.width)
    return sum(p.numel() for p in model.parameters())


def test_a_profile_from_a_finished_run(tmp_path):
    config = config_mod.load("quickstart", [*TINY, "policy.name=fixed", "cluster.max_workers=1"])
    run = RunDir.create(tmp_path / "runs", config)
    outcome = Controller(config, run, LocalGroup(config), Console(stream=io.StringIO(), force_plain=True)).train()
    run.finish("finished", **outcome.fields)
    path = tmp_path / "from-run.json"
    result = runner.invoke(app, ["calibrate", "--from-run", run.id, "--runs-dir", str(tmp_path / "runs"),
                                 "-o", str(path)])
    assert result.exit_code == 0, result.output
    model = profiles.load(path)
    assert model.sources == (f"the records of run {run.id}",)
    assert model.compute_s[1] > 0 and model.eval_s_per_sample > 0 and model.epoch_s > 0
    # one geometry throughout: the fitted step time is the recorded mean over every step of the run (less the
    # all-reduce of one worker with itself, which the model takes as none)
    geometries = [g for r in run.records("epoch") for g in r["geometries"]]
    recorded = sum((g["step_s"]["total"] - g["step_s"]["allreduce"]) * g["steps"] for g in geometries) / \
        sum(g["steps"] for g in geometries)
    g = geometries[0]
    assert model.step_s(1, g["per_worker_batch_size"], g["grad_accum_steps"]) == pytest.approx(recorded, rel=1e-6)
    assert model.device == f"{device_name(torch.device('cpu'))}, host {socket.gethostname()}"
    # the all-reduced gradient: 4 bytes per parameter, as the worker counted them into run.json
    counted = run.info()["num_parameters"]
    assert counted == _parameters_of(config) and model.gradient_bytes == 4 * counted
    # so `absa plan --from-run` needs no torch; a run made before workers counted them is counted here instead
    runs = str(tmp_path / "runs")
    code = ("import sys; from absa_cli.cli.app import main; sys.argv = ['absa', 'plan', 'quickstart', '--from-run', "
            f"{run.id!r}, '--runs-dir', {runs!r}]\ntry:\n    main()\nexcept SystemExit as exc:\n"
            "    assert not exc.code, exc.code\nprint('torch' in sys.modules)\n"
            f"from absa_cli.cli.calibrate import profile_from_run; print(profile_from_run({run.id!r}, "
            f"__import__('pathlib').Path({runs!r})).gradient_bytes)")
    for in_run_json, imports_torch in ((True, "False"), (False, "True")):
        if not in_run_json:
            info = run.info()
            del info["num_parameters"]
            run.replace_info(info)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "fewer than fixed" in done.stdout and done.stdout.splitlines()[-2:] == [imports_torch, str(4 * counted)]
    # a hand-edited count of another type is not multiplied as it stands ("1234" * 4): run.json reads as damaged and
    # the model is counted instead
    run.replace_info({**json.loads(run.info_path.read_text()), "num_parameters": "1234"})
    assert run.info()["status"] == "damaged" and "num_parameters is '1234', not int" in run.info()["error"]
    assert profile_from_run(run.id, tmp_path / "runs").gradient_bytes == 4 * counted


def test_a_profile_from_a_run_names_the_devices_the_run_trained_on(tmp_path):
    """Not this machine's: a run's records made on a GPU cluster, fitted on a laptop, still say which GPUs."""
    config = config_mod.load("quickstart", [*TINY, "epochs=1", "policy.name=fixed", "cluster.max_workers=1"])
    run = RunDir.create(tmp_path / "runs", config)
    outcome = Controller(config, run, LocalGroup(config), Console(stream=io.StringIO(), force_plain=True)).train()
    run.finish("finished", **outcome.fields)
    records = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["devices"] for r in epochs] == [[device_name(torch.device("cpu"))]]

    def fitted(devices):
        for record in epochs:
            if devices is None:
                del record["devices"]
            else:
                record["devices"] = devices
        run.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in records))
        path = tmp_path / "p.json"
        result = runner.invoke(app, ["calibrate", "--from-run", run.id, "--runs-dir", str(tmp_path / "runs"),
                                     "-o", str(path)])
        assert result.exit_code == 0, result.output
        return profiles.load(path).device

    host = socket.gethostname()
    assert fitted(["NVIDIA H200", "NVIDIA H100 80GB HBM3"]) == f"NVIDIA H100 80GB HBM3 + NVIDIA H200, host {host}"
    assert fitted(None) == f"devices not recorded (a run made before absa named them), host {host}"
    # an epoch's probe_s sums its probe and the probe's rechecks (policy.recheck): the profile holds one probe's time
    epochs[0].update(eigenvalue=3.0, eigenvalue_rechecks=[2.0, 2.5], probe_s=3.0)
    run.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert profile_from_run(run.id, tmp_path / "runs").probe_s == pytest.approx(1.0)
    del epochs[0]["eigenvalue_rechecks"]  # a run recorded before rechecks existed: one probe
    run.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert profile_from_run(run.id, tmp_path / "runs").probe_s == pytest.approx(3.0)


@pytest.mark.parametrize("args, message", [
    (["calibrate"], "give a preset to time, or --from-run RUN to fit a run's records"),
    (["calibrate", "quickstart", "--from-run", "x"], "not both"),
    (["calibrate", "--from-run", "../x"], "is not a plain name"),
    (["calibrate", "quickstart", "epochs=0", "--local"], "epochs must be > 0"),
    (["calibrate", "quickstart", "--local", "-o", "/nonexistent/folder/q.json"], "the folder /nonexistent/folder does "
                                                                                  "not exist"),
])
def test_bad_calibrate_input_is_one_line(args, message):
    assert_user_error(runner.invoke(app, args), message)


def test_ctrl_c_while_timing_or_before_training_is_one_line_and_exit_130(tmp_path, monkeypatch):
    from absa_cli.cli import calibrate as calibrate_mod
    from absa_cli.cli import driver as driver_mod

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(calibrate_mod, "_measure", interrupt)
    result = runner.invoke(app, ["calibrate", "quickstart", "--local", "-o", str(tmp_path / "q.json")])
    assert (result.exit_code, result.stderr.strip()) == (130, "interrupted; no profile was written")
    assert not (tmp_path / "q.json").exists()
    monkeypatch.setattr(driver_mod, "make_group", interrupt)
    result = runner.invoke(app, ["train", "quickstart", "--local", "--runs-dir", str(tmp_path / "runs")])
    assert (result.exit_code, result.stderr.strip()) == (130, "interrupted before training started; nothing to save")
    assert "Traceback" not in result.output


@pytest.mark.parametrize("output, says", [
    ("missing/q.json", "the folder {root}/missing does not exist; create it or choose another --output"),
    ("notes.txt/q.json", "{root}/notes.txt is a file, not a folder; move it or choose another --output"),
])
def test_an_output_folder_that_is_not_there_is_one_line_before_any_timing(tmp_path, output, says):
    """Checked before a minute of measuring; a file where the folder should be is named as such (review: it was
    "the folder notes.txt does not exist" for an existing file)."""
    (tmp_path / "notes.txt").write_text("a file")
    result = runner.invoke(app, ["calibrate", "quickstart", "--local", "-o", str(tmp_path / output)])
    assert_user_error(result, f"cannot write the profile to {tmp_path / output}: " + says.format(root=tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
