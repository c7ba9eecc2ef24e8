"""The run lock: one live driver per run; a dead driver's lock is taken over (real processes, real pids)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from absa_cli.run import lock
from absa_cli.run.lock import RunLock, RunLocked


def test_a_live_holder_refuses_a_second_driver_with_one_line(tmp_path):
    path = tmp_path / "lock.json"
    with RunLock(path, "run-a"):
        holder = json.loads(path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(RunLocked) as info:
            RunLock(path, "run-a").acquire()
        message = str(info.value)
        assert f"pid {os.getpid()}" in message and "run-a" in message and "\n" not in message
    assert not path.exists()  # released


def test_the_lock_of_a_dead_driver_is_taken_over(tmp_path):
    path = tmp_path / "lock.json"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    start = lock._process_start(child.pid)
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": child.pid, "pid_start": start,
                                "heartbeat": time.time()}))
    with pytest.raises(RunLocked):  # alive: refused
        RunLock(path, "run-b").acquire()
    child.kill()
    child.wait()
    held = RunLock(path, "run-b").acquire()  # dead: taken over at once, heartbeat or not
    try:
        assert json.loads(path.read_text())["pid"] == os.getpid()
        assert held.took_over.startswith(f"pid {child.pid} on {socket.gethostname()} (heartbeat ")  # `absa resume`
        # says so
    finally:
        held.release()


def test_a_reused_pid_does_not_keep_a_stale_lock(tmp_path):
    """Same pid, different process start time: the pid now belongs to someone else."""
    path = tmp_path / "lock.json"
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "pid_start": "1",
                                "heartbeat": time.time()}))
    RunLock(path, "run-c").acquire().release()


@pytest.mark.parametrize("content", ["garbage", "[]", '{"pid": "x"}', '{"host": "h", "pid": 1}'])
def test_an_unreadable_lock_file_says_so_and_how_long_until_it_is_stale(tmp_path, content):
    """Not "driven by pid -1 on None" (nor a traceback for JSON of another shape): the file is judged by its age,
    and the line says what to do."""
    path = tmp_path / "lock.json"
    path.write_text(content)
    with pytest.raises(RunLocked) as info:
        RunLock(path, "run-g").acquire()
    message = str(info.value)
    assert f"its lock file {path} cannot be read (damaged, or written by another version of absa)" in message
    assert "delete the file, or wait" in message and "None" not in message and "\n" not in message
    old = time.time() - lock.STALE_AFTER_S - 5
    os.utime(path, (old, old))
    RunLock(path, "run-g").acquire().release()  # stale by its age: taken over


@pytest.mark.parametrize("age_s, stale", [(5, False), (lock.STALE_AFTER_S + 5, True)])
def test_another_hosts_lock_is_judged_by_its_heartbeat(tmp_path, age_s, stale):
    holder = {"host": "some-other-host", "pid": 1, "heartbeat": time.time() - age_s}
    assert lock.is_stale(holder) is stale


def test_the_heartbeat_advances_while_held(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "HEARTBEAT_S", 0.05)
    path = tmp_path / "lock.json"
    with RunLock(path, "run-d"):
        first = json.loads(path.read_text())["heartbeat"]
        deadline = time.time() + 5
        while json.loads(path.read_text())["heartbeat"] == first and time.time() < deadline:
            time.sleep(0.02)
        assert json.loads(path.read_text())["heartbeat"] > first


def test_of_drivers_racing_for_a_stale_lock_exactly_one_wins(tmp_path):
    path = tmp_path / "lock.json"
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": 2**22 + 7, "heartbeat": 0}))  # no such pid
    script = ("import sys, time\nfrom absa_cli.run.lock import RunLock, RunLocked\n"
              "try:\n    lock = RunLock(sys.argv[1], 'run-e').acquire()\nexcept RunLocked:\n    print('refused')\n"
              "else:\n    print('won'); time.sleep(2); lock.release()\n")
    racers = [subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True)
              for _ in range(4)]
    outcomes = sorted(racer.communicate(timeout=60)[0].strip() for racer in racers)
    assert outcomes == ["refused", "refused", "refused", "won"]


def _take_over(path) -> None:
    """What another host's `absa resume` does after finding this driver's heartbeat stale."""
    path.write_text(json.dumps({"host": "other-host", "pid": 4242, "heartbeat": time.time()}))


def _wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_driver_whose_lock_was_taken_over_learns_it_and_leaves_the_new_holders_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "HEARTBEAT_S", 0.05)
    path = tmp_path / "lock.json"
    held = RunLock(path, "run-d").acquire()
    held.check()  # ours: nothing to say
    _take_over(path)
    _wait_for(lambda: held.taken_by is not None)
    with pytest.raises(lock.LockLost, match=r"run run-d was taken over by pid 4242 on other-host"):
        held.check()
    held.release()
    assert json.loads(path.read_text())["pid"] == 4242  # never removed or overwritten


def test_a_displaced_driver_stops_without_writing_to_the_run(tmp_path, monkeypatch, one_thread):
    """Through the CLI: the lock is taken over mid-run; the driver exits 1 with one line and writes nothing more
    (no status, no further epoch record or checkpoint; the new holder's lock stays)."""
    import threading

    from typer.testing import CliRunner

    from absa_cli.cli.app import app
    from conftest import TINY

    monkeypatch.setattr(lock, "HEARTBEAT_S", 0.05)
    taken: dict = {}

    def take_over_after_the_first_epoch() -> None:
        _wait_for(lambda: any(tmp_path.glob("*/checkpoints/epoch-0001.pt")), timeout_s=120)
        (run_path,) = tmp_path.iterdir()
        _take_over(run_path / "lock.json")
        taken["path"] = run_path

    thread = threading.Thread(target=take_over_after_the_first_epoch, daemon=True)
    thread.start()
    result = CliRunner().invoke(app, ["train", "quickstart", *TINY, "epochs=40", "--local",
                                      "--runs-dir", str(tmp_path)])
    thread.join(timeout=5)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "taken over by pid 4242 on other-host" in errors[0], result.stderr
    assert "Traceback" not in result.output and "summary:" not in result.output
    run_path = taken["path"]
    assert json.loads((run_path / "run.json").read_text())["status"] == "running"  # the new driver's to write
    assert json.loads((run_path / "lock.json").read_text())["pid"] == 4242
    epochs = [json.loads(line)["epoch"] for line in (run_path / "metrics.jsonl").read_text().splitlines()
              if json.loads(line).get("kind") == "epoch"]
    checkpoints = sorted(p.name for p in (run_path / "checkpoints").glob("*.pt"))
    assert epochs and max(epochs) < 40  # stopped early ...
    assert checkpoints[-1] <= f"epoch-{max(epochs):04d}.pt"  # ... and no checkpoint beyond its last record


def test_a_folder_in_the_lock_files_place_is_judged_by_its_age_and_never_a_traceback(tmp_path):
    """`lock.read` is also what `absa runs list` calls for every run: a folder (or a file this user cannot read)
    where lock.json belongs is an unreadable lock, young or stale by its age; taking over a stale one that cannot be
    removed is one line naming the file (review)."""
    path = tmp_path / "lock.json"
    path.mkdir()
    assert lock.read(path)["host"] is None and not lock.is_stale(lock.read(path))
    with pytest.raises(RunLocked, match="cannot be read"):
        RunLock(path, "run-d").acquire()
    (path / "x").write_text("")  # a folder that is not empty cannot be unlinked (nor rmdir'ed)
    old = time.time() - 2 * lock.STALE_AFTER_S
    os.utime(path, (old, old))
    with pytest.raises(RunLocked, match=f"its lock file {path} cannot be removed .*remove it by hand") as info:
        RunLock(path, "run-d").acquire()
    assert "\n" not in str(info.value)


def test_a_new_run_is_held_by_its_driver_from_the_moment_it_is_listed(tmp_path, monkeypatch):
    """`absa train` takes the run's lock before run.json makes the folder a run: `runs list` never shows a run being
    created as ``running (driver gone)`` (the window between creating the folder and taking the lock)."""
    from absa_cli import config as config_mod
    from absa_cli.cli.runs import _status
    from absa_cli.run.rundir import RunDir, list_runs

    seen = []
    write_info = RunDir.write_info

    def watched(self, **fields):
        write_info(self, **fields)
        seen.extend(_status(run)[0] for run in list_runs(tmp_path))  # what `runs list` shows right then

    monkeypatch.setattr(RunDir, "write_info", watched)
    run, held = RunDir.create_held(tmp_path, config_mod.load("quickstart", []))
    try:
        assert seen == ["running"]
        assert lock.read(run.lock_path)["pid"] == os.getpid()
    finally:
        held.release()
    assert _status(run)[0] == "running (driver gone)"  # and once the driver lets go without finishing, it says so
