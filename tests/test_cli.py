"""The command line through Typer's CliRunner: exit codes, output contract, run directory, user errors.

User errors must print one line starting with "error:" and exit 2, with no traceback; `absa --help` must not
import torch or ray.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from absa_cli.cli.app import app
from absa_cli.run.metrics import EPOCH_FIELDS

from conftest import TINY, as_a_terminal_starts, assert_user_error, audited_epochs, with_private_mounts

runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, list(args))


def test_train_quickstart_end_to_end(tmp_path, ray_cluster):
    result = _invoke("train", "quickstart", *TINY, "--runs-dir", str(tmp_path))  # Ray is the default path
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("run: ")
    assert lines[-1].startswith("summary: 2 epochs")
    run_dir = tmp_path / lines[0].removeprefix("run: ")
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["last_epoch"] == 2 and info["local"] is False
    assert "name: shapes" in (run_dir / "config.yaml").read_text()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    for record in epochs:
        assert set(EPOCH_FIELDS) <= set(record)
        assert record["samples_seen"] == 256  # every training sample once per epoch
        # 64 = 2 workers × 32 (batch.per_worker_max) × 1: the quickstart allows 2 workers (cluster.max_workers)
        assert record["global_batch_size"] == 64 and record["num_workers"] == 2
        assert record["grad_accum_steps"] == 1
    assert epochs[-1]["updates"] == 2 * 4  # 256 / 64 steps per epoch
    assert records[0]["kind"] == "geometry"
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt")) == ["epoch-0001.pt", "epoch-0002.pt"]


def test_non_tty_output_is_plain(tmp_path):
    result = _invoke("train", "quickstart", *TINY, "epochs=1", "--local", "--runs-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "\x1b[" not in result.output  # no escape codes when stdout is not a terminal


def test_unknown_key_exit_2(tmp_path):
    result = _invoke("train", "quickstart", "optim.lrr=0.1", "--runs-dir", str(tmp_path))
    assert_user_error(result, "'optim.lrr'", "did you mean 'optim.lr'")
    assert not any(tmp_path.iterdir())  # nothing created for a bad command


def test_wrong_type_exit_2(tmp_path):
    assert_user_error(_invoke("train", "quickstart", "epochs=many", "--runs-dir", str(tmp_path)),
                       "'epochs'", "expects int", "'many'")


def test_local_run_has_one_worker_and_accumulates(tmp_path):
    result = _invoke("train", "quickstart", *TINY, "epochs=1", "--local", "--runs-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    (metrics,) = tmp_path.glob("*/metrics.jsonl")
    (epoch,) = [r for r in map(json.loads, metrics.read_text().splitlines()) if r["kind"] == "epoch"]
    assert (epoch["num_workers"], epoch["grad_accum_steps"]) == (1, 2)  # 64 = 1 worker × 32 × 2
    assert_user_error(_invoke("train", "quickstart", "--local", "--max-gpus", "2"), "--local")


def test_a_local_run_keeps_the_sample_audit_too_in_a_folder_it_makes(tmp_path):
    """`--local` once ignored `logging.sample_log_dir`; now its one worker logs as a Ray worker does, into a folder
    made for it, and the log shows every sample of every epoch once (applied, or in the dropped tail)."""
    audit = tmp_path / "audit" / "nested"
    result = _invoke("train", "quickstart", *TINY, "data.train_size=300", f"logging.sample_log_dir={audit}",
                     "--local", "--runs-dir", str(tmp_path / "runs"))
    assert result.exit_code == 0, result.output
    epochs = audited_epochs(audit)
    assert sorted(epochs) == [0, 1]
    for applied, dropped in epochs.values():
        assert sorted(applied + dropped) == list(range(300)) and dropped  # 300 is no multiple of a batch


def test_a_sample_log_dir_that_cannot_be_written_is_one_line_before_anything_starts(tmp_path):
    """Once a worker that could not open its log failed to join, and the group waited 300 s for it as for missing
    capacity, then blamed the cluster's free CPUs."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = _invoke("train", "quickstart", f"logging.sample_log_dir={blocker / 'audit'}", "--runs-dir",
                     str(tmp_path / "runs"))
    assert_user_error(result, f"logging.sample_log_dir {blocker / 'audit'} is under {blocker}, which is not a "
                              f"directory; choose a folder this user can write (it is made if missing)")
    assert not (tmp_path / "runs").exists()
    planned = _invoke("plan", "quickstart", f"logging.sample_log_dir={blocker / 'audit'}")
    assert planned.exit_code == 0, planned.output  # nothing is written by a plan (nor here by --submit)


def test_unknown_preset_exit_2():
    assert_user_error(_invoke("train", "quickstrat"), "unknown preset 'quickstrat'", "did you mean 'quickstart'")


def test_missing_dataset_exit_2_and_no_run_dir(tmp_path):
    data_root = tmp_path / "data"
    result = _invoke("train", "c1-cifar10", f"data.root={data_root}", "--runs-dir", str(tmp_path / "runs"))
    assert_user_error(result, str(data_root / "cifar-10-batches-py"), "data.download=true")
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare for a private read-only file system")
def test_a_read_only_runs_dir_is_one_line_before_a_ray_cluster_starts(tmp_path):
    """Found by writing (as root in a user namespace, permission bits alone would not stop a write): a real
    read-only tmpfs in a private mount namespace. Nothing started first: stderr is that one line, no Ray output."""
    readonly = tmp_path / "ro"
    readonly.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    script = (f"mount -t tmpfs -o ro none {readonly} && exec {sys.executable} -m absa_cli train quickstart "
              f"--runs-dir {readonly / 'runs'}")
    result = with_private_mounts(script, timeout=120, env=env)
    assert result.returncode == 2 and not result.stdout, result.stderr
    assert result.stderr == (f"error: runs directory {readonly / 'runs'} cannot be written (Read-only file system); "
                             f"pass a writable --runs-dir (or set ABSA_RUNS_DIR)\n")


def test_a_local_run_resumed_on_ray_says_it_is_no_longer_exact(tmp_path, ray_cluster):
    """A `--local` run may move to Ray workers on resume, but its numbers then drift (another thread count, another
    summation order): the resume says so, with the command that continues it exactly, instead of switching
    silently (review). Moved back with --local, it says so the other way round (it did not)."""
    result = _invoke("train", "quickstart", *TINY, "--local", "--runs-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    (run,) = tmp_path.iterdir()
    info = json.loads((run / "run.json").read_text())
    assert info["local"] is True
    (run / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))
    newest = run / "checkpoints" / "epoch-0002.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # epoch 2 trains again, on Ray
    resumed = _invoke("resume", run.name, "--runs-dir", str(tmp_path))
    assert resumed.exit_code == 0, resumed.output
    assert (f"note: run {run.name} was trained with --local (one process, torch's default thread count); on Ray "
            f"workers its steps sum in another order and its numbers drift from an uninterrupted run: "
            f"`absa resume {run.name} --local --runs-dir {tmp_path}` continues it exactly") in resumed.stderr
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["local"] is False  # its last driver ran it on Ray
    from absa_cli import config as config_mod

    most = config_mod.load("quickstart", TINY).cluster.max_workers
    assert most > 1 and info["max_workers"] == most  # --local's one worker was that command's, not the run's
    (run / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))  # and back to --local: said too
    newest.write_bytes(newest.read_bytes()[:1000])
    back = _invoke("resume", run.name, "--local", "--runs-dir", str(tmp_path))
    assert back.exit_code == 0, back.output
    assert (f"note: run {run.name} last ran on Ray workers; in this process its steps run on one worker with "
            f"torch's default thread count, sum in another order, and its numbers drift from an uninterrupted run: "
            f"`absa resume {run.name} --runs-dir {tmp_path}` continues it exactly") in back.stderr
    assert "was trained with --local" not in back.stderr and json.loads((run / "run.json").read_text())["local"]


def test_a_run_list_shows_as_damaged_is_found_by_show_and_refused_by_resume_in_one_line(tmp_path):
    result = _invoke("train", "quickstart", *TINY, "epochs=1", "cluster.max_workers=3", "--local", "--runs-dir",
                     str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "summary: 1 epoch, " in result.stdout  # counted in words, not "1 epochs"
    assert ("note: the LR decay after epoch 8 (optim.decay_epochs=[8]) never comes in 1 epoch; set "
            "optim.decay_epochs for a shorter run\n") in result.stderr  # the preset's decay, out of reach
    (run,) = tmp_path.iterdir()
    assert "max_workers: 3" in (run / "config.yaml").read_text()  # the run's; --local's 1 was the command's
    (run / "config.yaml").unlink()
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))
    listing = _invoke("runs", "list", "--runs-dir", str(tmp_path))
    assert listing.exit_code == 0 and run.name in listing.output and "damaged" in listing.output
    shown = _invoke("runs", "show", run.name, "--runs-dir", str(tmp_path))
    assert shown.exit_code == 0, shown.output
    assert f"status damaged: {run / 'config.yaml'} is missing" in shown.output and "epoch-0001.pt" in shown.output
    assert_user_error(_invoke("resume", run.name, "--local", "--runs-dir", str(tmp_path)),
                      f"run {run.name} is damaged: {run / 'config.yaml'} is missing")
    (run / "config.yaml").write_text("")  # empty (cut) is damaged too, not the schema's defaults
    assert_user_error(_invoke("resume", run.name, "--local", "--runs-dir", str(tmp_path)), "an empty or cut file")
    for text, says in (("{not json", "is not valid JSON"), ("[]", "is not a JSON object"), ("null", "not a JSON")):
        (run / "run.json").write_text(text)  # resuming would rewrite it without the run's uid: refused
        for command in (["runs", "list"], ["runs", "show", run.name]):
            shown = _invoke(*command, "--runs-dir", str(tmp_path))
            assert shown.exit_code == 0 and "damaged" in shown.output and "Traceback" not in shown.output, text
        assert_user_error(_invoke("resume", run.name, "--local", "--runs-dir", str(tmp_path)),
                          f"run {run.name} is damaged", says)


def test_runs_show_reads_hand_damaged_records_without_a_traceback(tmp_path):
    """A line that is no object, a record without the fields absa writes, a field of another type: each was a
    traceback (AttributeError, KeyError); the records are shown with "-" where a field is missing."""
    from absa_cli import config as config_mod
    from absa_cli.run.rundir import RunDir

    run = RunDir.create(tmp_path, config_mod.load("quickstart", []))
    lines = ["null", "[1, 2]", '{"kind": "geometry", "epoch": 1, "global_batch_size": 128}',
             '{"kind": "resize", "epoch": 2, "from_workers": 1, "to_workers": 2, "resize_s": "fast"}',
             '{"kind": "epoch", "epoch": "3", "test_acc": "high"}']
    run.metrics_path.write_text("\n".join(lines) + "\n")
    shown = _invoke("runs", "show", run.id, "--runs-dir", str(tmp_path))
    assert shown.exit_code == 0 and "Traceback" not in shown.output, shown.output
    text = " ".join(shown.output.split())
    assert "1 geometry 128 - × - × -" in text and "live in fast s" in text
    assert "last epoch 3: updates -," in text and "test acc high" in text


def test_runs_list_tells_a_resume_starting_and_a_dead_driver_from_the_status_run_json_holds(tmp_path):
    """run.json says what the last driver wrote; the lock says whether a driver lives now. A resume holds the lock
    before it writes itself into run.json (Ray starts first): `resuming`, not `interrupted`, nor `running` for a
    killed run it takes over. The driver run.json names still holding the lock of a stopped run is a run ending:
    `interrupted`. `running` without a live lock holder: `running (driver gone)`. A damaged run.json stays
    `damaged`; a lock file that cannot be read is judged by its age, never a traceback."""
    import socket

    from absa_cli import config as config_mod
    from absa_cli.run import lock
    from absa_cli.run.rundir import RunDir, Status

    run = RunDir.create(tmp_path, config_mod.load("quickstart", []))

    def listed() -> str:
        result = _invoke("runs", "list", "--runs-dir", str(tmp_path))
        shown = _invoke("runs", "show", run.id, "--runs-dir", str(tmp_path))
        assert result.exit_code == 0 and shown.exit_code == 0, result.output + shown.output
        status = re.search(rf"{run.id}\s+\S+\s+(.+?)\s+0/[\d-]+ ", result.stdout).group(1)
        assert f"status {status}" in shown.stdout, shown.stdout  # `runs show` says the same
        return status

    def lock_of(pid: int) -> None:
        run.lock_path.write_text(json.dumps({"host": socket.gethostname(), "pid": pid,
                                             "pid_start": lock._process_start(pid), "heartbeat": time.time()}))

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    run.write_info(pid=int(gone.stdout))  # the driver run.json names was killed
    driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a resume, alive
    try:
        lock_of(driver.pid)
        assert listed() == "resuming"  # a takeover of the killed run, before the resume writes run.json
        shown = _invoke("runs", "show", run.id, "--runs-dir", str(tmp_path)).stdout
        here = socket.gethostname()
        assert f"driver pid {driver.pid} on {here} (before it: pid {gone.stdout.strip()} on {here})" in shown, shown
        run.finish(Status.INTERRUPTED)
        assert listed() == "resuming"
        info = json.loads(run.info_path.read_text())
        run.info_path.write_text(json.dumps({**info, "last_epoch": "x"}))
        assert listed() == "damaged"  # whoever holds the lock
        run.info_path.write_text(json.dumps(info))
        run.write_info(pid=driver.pid)  # the resume wrote itself in: the lock's holder is run.json's driver
        assert listed() == "interrupted"  # ... and the status it wrote stands (here: it is ending)
    finally:
        driver.kill()
        driver.wait()
    assert listed() == "interrupted"  # that resume died
    run.write_info(status=Status.RUNNING)
    assert listed() == "running (driver gone)"
    run.lock_path.write_text("not a lock")  # young and unreadable: a driver may be writing it; not `resuming`
    assert listed() == "running"
    run.lock_path.unlink()
    run.lock_path.mkdir()  # not even a file: judged by its age as well, no traceback
    assert listed() == "running"
    run.lock_path.rmdir()
    with run.lock():  # the driver that wrote run.json holds the lock: a run that is ending, not a resume
        run.write_info(pid=os.getpid(), host=socket.gethostname())
        run.finish(Status.INTERRUPTED)
        assert listed() == "interrupted"


def test_a_local_run_keeps_the_worker_count_its_batches_split_well_on(tmp_path):
    """`--local`'s one worker is the command's: config.yaml keeps the preset's count (or `--max-gpus 1`'s) for a
    resume on Ray, unless the run's batches split badly on that many (66 = 2 × 3 × 11 on 2 workers), where it keeps
    the one it trained on: a plain resume is not refused for a count nobody asked for (review). A resume's own
    `--max-gpus` that splits badly names that option, not "this version of absa"."""
    small = ["epochs=1", "data.train_size=264", "data.test_size=128", "batch.per_worker_max=32", "policy.name=fixed"]
    for name, extra, kept in (("odd", ["batch.global_batch_size=66"], 1), ("even", ["batch.global_batch_size=64"], 2),
                              ("one", ["batch.global_batch_size=64", "--max-gpus", "1"], 1)):
        runs = tmp_path / name
        result = _invoke("train", "quickstart", *small, *extra, "--local", "--runs-dir", str(runs))
        assert result.exit_code == 0, result.output
        (run,) = runs.iterdir()
        assert f"max_workers: {kept}\n" in (run / "config.yaml").read_text(), name
    (run,) = (tmp_path / "odd").iterdir()
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))
    refused = _invoke("resume", run.name, "--max-gpus", "2", "--runs-dir", str(tmp_path / "odd"))
    assert_user_error(refused, "global batch 66 splits badly: on 2 workers", "resume it with a smaller --max-gpus")
    assert "this version" not in refused.stderr and "choose batch.global_batch_size" not in refused.stderr


def test_runs_list_without_runs_is_a_hint_but_a_named_folder_that_is_not_there_is_an_error(tmp_path, monkeypatch):
    """A fresh machine has no ./runs yet: `absa runs list` says how to start one, exit 0. A folder named with
    --runs-dir or ABSA_RUNS_DIR that does not exist is a typo, not an empty registry: one line, exit 2."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ABSA_RUNS_DIR", raising=False)
    fresh = _invoke("runs", "list")
    assert fresh.exit_code == 0 and "no runs in runs; start one with `absa train quickstart`" in fresh.stdout, \
        fresh.output
    (tmp_path / "empty").mkdir()
    empty = _invoke("runs", "list", "--runs-dir", str(tmp_path / "empty"))
    assert empty.exit_code == 0 and f"no runs in {tmp_path / 'empty'}" in empty.stdout, empty.output
    monkeypatch.setenv("ABSA_RUNS_DIR", str(tmp_path / "typo"))
    assert_user_error(_invoke("runs", "list"), f"runs directory {tmp_path / 'typo'} does not exist", "--runs-dir",
                      "ABSA_RUNS_DIR")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "typo").exists()


def test_runs_list_and_show_print_brackets_from_hand_edited_files_as_text(tmp_path):
    """run.json and metrics.jsonl are the user's files: `[/]` in them is text, not rich markup that ended
    `absa runs list` with a MarkupError (review)."""
    from absa_cli import config as config_mod
    from absa_cli.run.rundir import RunDir

    run = RunDir.create(tmp_path, config_mod.load("quickstart", []))
    run.metrics_path.write_text('{"kind": "geometry", "epoch": 1, "global_batch_size": "[/]", "num_workers": 2}\n'
                                '{"kind": "resume", "epoch": 1, "checkpoint": "[bold]x[/]"}\n'
                                '{"kind": "failure", "epoch": 2, "samples_seen": 12800, "lost_workers": 1, '
                                '"from_workers": 2, "to_workers": 1, "error": "[/]"}\n')
    run.write_info(error="bad [red]value[/] [/]", host="[/]")
    listed = _invoke("runs", "list", "--runs-dir", str(tmp_path))
    assert listed.exit_code == 0 and "[/]" in listed.stdout, listed.output
    shown = _invoke("runs", "show", run.id, "--runs-dir", str(tmp_path))
    assert shown.exit_code == 0 and "bad [red]value[/] [/]" in shown.stdout and "from [bold]x[/]" in shown.stdout, \
        shown.output
    assert "lost 1 at sample 12,800: [/]" in shown.stdout, shown.stdout  # thousands grouped, as everywhere


def test_runs_show_prints_a_blown_up_loss_in_four_significant_digits(tmp_path):
    from absa_cli import config as config_mod
    from absa_cli.run.rundir import RunDir

    run = RunDir.create(tmp_path, config_mod.load("quickstart", []))
    run.metrics_path.write_text('{"kind": "epoch", "epoch": 1, "updates": 64, "train_loss": 1.056e10, '
                                '"train_acc": 0.1, "test_acc": 0.1, "lr": 8.0}\n')
    shown = _invoke("runs", "show", run.id, "--runs-dir", str(tmp_path))
    assert shown.exit_code == 0 and "train loss 1.056e+10 acc 0.1000" in shown.stdout, shown.output


def test_runs_list_counts_the_samples_a_mid_epoch_checkpoint_holds(tmp_path):
    """A run stopped 1,280 samples into its first epoch has something to resume from: `0/4 +1,280 samples`, not a
    bare 0/4, and the batch and workers it stopped on. Once an epoch is done past it, the count is epochs again; a
    live driver's run is past its checkpoint, so it has none; a damaged manifest leaves the bare count."""
    import socket

    from absa_cli import config as config_mod
    from absa_cli.run import lock
    from absa_cli.run.checkpoint import CheckpointStore
    from absa_cli.run.rundir import RunDir, Status, checkpoint_name

    run = RunDir.create(tmp_path, config_mod.load("quickstart", ["epochs=4"]))
    store = CheckpointStore(run.checkpoints_dir)

    def epoch_cell() -> str:
        result = _invoke("runs", "list", "--runs-dir", str(tmp_path))
        assert result.exit_code == 0, result.output
        return re.search(rf"{run.id}\s+quickstart\s+.+?\s+(\d+/4( \+[\d,]+ samples)?) ", result.stdout).group(1)

    store.save(checkpoint_name(0, 1280), {"epoch": 0, "samples_seen": 1280, "updates": 10})
    run.finish(Status.INTERRUPTED, last_epoch=0, updates=10)
    assert epoch_cell() == "0/4 +1,280 samples"
    shown = _invoke("runs", "show", run.id, "--runs-dir", str(tmp_path)).stdout
    row = next(line for line in shown.splitlines() if line.startswith("epoch-0000-sample-000001280.pt "))
    assert row.split()[1:4] == ["0", "1,280", "10"] and re.search(r" \d{1,3}(,\d{3})+ ", row), row  # as above
    row = _invoke("runs", "list", "--runs-dir", str(tmp_path)).stdout.splitlines()[1]
    assert row.split()[6:8] == ["-", "-"]  # no epoch ended: run.json has no batch yet, nor metrics a geometry
    run.metrics_path.write_text('{"kind": "geometry", "epoch": 1, "global_batch_size": 128, "num_workers": 2}\n')
    row = _invoke("runs", "list", "--runs-dir", str(tmp_path)).stdout.splitlines()[1]
    assert row.split()[6:9] == ["128", "2", "-"], row  # the geometry the run stopped on
    store.save(checkpoint_name(1, 0), {"epoch": 1, "samples_seen": 0, "updates": 16})
    run.write_info(last_epoch=1)
    assert epoch_cell() == "1/4"
    store.save(checkpoint_name(1, 640), {"epoch": 1, "samples_seen": 640, "updates": 21})
    assert epoch_cell() == "1/4 +640 samples"
    with run.lock():  # resumed: a live driver is past that checkpoint, and says where only when the epoch ends
        run.write_info(status=Status.RUNNING, pid=os.getpid(), host=socket.gethostname())
        assert epoch_cell() == "1/4"
    assert epoch_cell() == "1/4 +640 samples"  # `running (driver gone)`: a resume starts from it
    driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a resume holding the lock
    try:
        run.lock_path.write_text(json.dumps({"host": socket.gethostname(), "pid": driver.pid,
                                             "pid_start": lock._process_start(driver.pid), "heartbeat": time.time()}))
        assert epoch_cell() == "1/4"  # `resuming`: past that checkpoint too
    finally:
        driver.kill()
        driver.wait()
        run.lock_path.unlink()
    store.manifest_path.write_text("{")
    assert epoch_cell() == "1/4"
    one = RunDir.create(tmp_path, config_mod.load("quickstart", ["epochs=1"]))
    shown = _invoke("runs", "show", one.id, "--runs-dir", str(tmp_path)).stdout
    assert "(width 0.5); 1 epoch; policy absa" in " ".join(shown.split()), shown  # it said "1 epochs"


@pytest.mark.parametrize("command", [[], ["runs"], ["presets"]])
def test_a_bare_group_prints_its_help_once(command):
    result = _invoke(*command)
    assert result.exit_code == 2 and result.stdout.count("Usage:") == 1 and not result.stderr.strip(), result.output


@pytest.mark.parametrize("where", [["--local"], []])
def test_a_batch_larger_than_the_training_set_exit_2_and_no_run_dir(tmp_path, where):
    """The cap would make epochs without a single full step (a tail is dropped, never a short step): refused up
    front, locally and before a Ray cluster starts, with the field and the largest value that fits."""
    result = _invoke("train", "quickstart", "data.train_size=600", *where, "--runs-dir", str(tmp_path / "runs"))
    assert_user_error(result, "policy.max_global_batch=1024", "600 training samples", "at most 600")
    assert not (tmp_path / "runs").exists()
    fixed = _invoke("train", "quickstart", "data.train_size=100", "policy.name=fixed", "--local",
                    "--runs-dir", str(tmp_path / "fixed"))
    assert_user_error(fixed, "batch.global_batch_size=128", "100 training samples")
    assert not (tmp_path / "fixed").exists()


def test_presets_list_and_show():
    listed = _invoke("presets", "list")
    assert listed.exit_code == 0 and "quickstart" in listed.stdout and "resnet18-imagenet" in listed.stdout
    shown = _invoke("presets", "show", "c1-cifar10", "optim.lr=0.3")
    assert shown.exit_code == 0 and "lr: 0.3" in shown.stdout and "name: c1" in shown.stdout
    assert_user_error(_invoke("presets", "show", "nope"), "unknown preset 'nope'")


def test_a_worker_imports_torchvision_only_for_what_needs_it():
    """Every Ray worker imports the actor's module and builds an engine: torchvision's import alone cost each one
    about 1.2 s of CPU. Only ResNet-18 and the image folders (and CIFAR/SVHN downloads) use it."""
    code = ("import sys; import absa_cli.cluster.worker; from absa_cli import config; "
            "from absa_cli.worker.engine import Engine; "
            f"Engine(config.load('quickstart', {TINY!r})); print('torchvision' in sys.modules); "
            "from absa_cli.models import build_model; build_model('resnet18', 10, 32); "
            "print('torchvision' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False", "True"], done.stdout + done.stderr


@pytest.mark.parametrize(("command", "usage"), [
    (["train"], "absa train [OPTIONS] {PRESET} [KEY=VALUE]..."),
    (["resume"], "absa resume [OPTIONS] {RUN_ID} [KEY=VALUE]..."),
    (["calibrate"], "absa calibrate [OPTIONS] [PRESET] [KEY=VALUE]..."),
    (["hessian"], "absa hessian [OPTIONS] {CHECKPOINT} [KEY=VALUE]..."),
    (["plot"], "absa plot [OPTIONS] {RUN_ID}..."),
    (["runs", "show"], "absa runs show [OPTIONS] {RUN_ID}"),
])
def test_help_writes_commands_as_the_docs_do(command, usage):
    """Arguments by upper-case name, as README and docs/ write them; flags without Typer's ``<bool>`` type, which
    reads as if the flag took a value; a missing argument named the same way."""
    shown = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and usage in shown.stdout, shown.stdout
    assert "<bool>" not in shown.stdout and "--help " in shown.stdout
    missing = usage.split("{")[1].split("}")[0] if "{" in usage else None
    if missing:
        assert_user_error(_invoke(*command), f"missing argument '{missing}'", f"absa {' '.join(command)} --help")


def test_a_group_lists_each_command_on_one_line_when_it_fits():
    """Typer's rich help kept the docstrings' line breaks in a group's command list ("... and a summary" / "last.")."""
    shown = runner.invoke(app, ["--help"], env={"COLUMNS": "400"})
    assert shown.exit_code == 0 and "<bool>" not in shown.stdout
    train = next(line for line in shown.stdout.splitlines() if line.startswith("│ train "))
    assert "a summary last." in train and "`absa resume <run-id>` continues." in train, shown.stdout


def test_help_is_fast_and_imports_neither_torch_nor_ray():
    code = ("import sys, time; t = time.perf_counter(); from absa_cli.cli.app import app; "
            "assert 'torch' not in sys.modules and 'ray' not in sys.modules, 'heavy import at CLI load'; "
            "print(time.perf_counter() - t)")
    subprocess.run([sys.executable, "-c", code], check=True)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "absa_cli", "--help"], capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    assert done.returncode == 0 and "train" in done.stdout
    assert elapsed < 1.0, f"absa --help took {elapsed:.2f} s"


def test_non_finite_metrics_are_written_as_null(tmp_path):
    """A diverged run must not crash on its own metrics: NaN/inf become null, and the file stays strict JSON."""
    from absa_cli.run.metrics import JsonlSink

    sink = JsonlSink(tmp_path / "metrics.jsonl")
    sink.write({"kind": "epoch", "train_loss": float("nan"), "nested": {"x": [float("inf"), 1.5]}, "lr": 0.1})
    (line,) = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(line) == {"kind": "epoch", "train_loss": None, "nested": {"x": [None, 1.5]}, "lr": 0.1}
    assert "NaN" not in line and "Infinity" not in line


@pytest.mark.parametrize("argv, line", [
    (["trian"], "error: no such command 'trian' (did you mean 'train'?); see `absa --help`"),
    (["runs", "shw"], "error: no such command 'shw' (did you mean 'show'?); see `absa runs --help`"),
])
def test_a_misspelt_command_is_one_line_with_the_suggestion_in_parentheses(argv, line):
    """As absa's own suggestions read ("unknown config key ... (did you mean ...?)"); it was "... 'trian'. Did you
    mean 'train'?; see ..." (review)."""
    result = _invoke(*argv)
    assert_user_error(result)
    assert result.stderr == line + "\n"


def test_a_console_closed_mid_run_leaves_the_run_to_finish(tmp_path):
    """`absa train ... | head -1`: the reader goes after the first line. The run used to die at its next line with
    exit code 1, nothing said, left `running` and locked; the console is a view, so the run goes on to its end."""
    process = subprocess.Popen([sys.executable, "-m", "absa_cli", "train", "quickstart", *TINY, "--local",
                                "--runs-dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    first = process.stdout.readline()
    process.stdout.close()  # as `head -1` exits
    stderr = process.communicate(timeout=120)[1]
    assert first.startswith("run: ") and process.returncode == 0, stderr
    run = tmp_path / first.split()[1]
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    assert not (run / "lock.json").exists() and "Traceback" not in stderr and "Broken" not in stderr, stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full, a file every write to fails (ENOSPC)")
def test_output_that_cannot_be_written_is_one_line_and_exit_1_and_the_run_finishes(tmp_path):
    """`absa train ... > out.txt` on a disk that is full: it was a traceback at the first line, the run left
    `running` and locked. Now the run goes on to its end (its records are in its directory, not on the console),
    and the command ends saying that what it printed is lost."""
    with open("/dev/full", "w") as full:
        process = subprocess.run([sys.executable, "-m", "absa_cli", "train", "quickstart", *TINY, "--local",
                                  "--runs-dir", str(tmp_path)], stdout=full, stderr=subprocess.PIPE, text=True,
                                 timeout=120)
    assert process.returncode == 1 and "Traceback" not in process.stderr, process.stderr
    assert process.stderr.splitlines()[-1] == ("error: the output could not be written (No space left on device); "
                                               "what this command printed is lost: write it where there is room")
    (run,) = tmp_path.iterdir()
    assert json.loads((run / "run.json").read_text())["status"] == "finished" and not (run / "lock.json").exists()


def test_a_stop_after_the_shared_console_closed_still_checkpoints(tmp_path):
    """`absa train ... 2>&1 | head -1`, then Ctrl-C: the stop's own line goes to the same closed pipe. Written from
    the signal handler, it raised BrokenPipeError into the training loop: the run ended `failed`, exit 1, with no
    stop checkpoint (review)."""
    process = subprocess.Popen(as_a_terminal_starts(
        [sys.executable, "-m", "absa_cli", "train", "quickstart", "epochs=3", "--local", "--runs-dir",
         str(tmp_path)]), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = process.stdout.readline()
    process.stdout.close()
    run = tmp_path / first.split()[1]
    deadline = time.monotonic() + 60
    while not (run / "lock.json").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2)  # training
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted" and info["checkpoint"], info
    assert not (run / "lock.json").exists()
