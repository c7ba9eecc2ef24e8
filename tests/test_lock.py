"""The run lock: one live driver per run; a dead driver's lock is taken over (real processes, real pids)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from absa_cli import lock
from absa_cli.lock import RunLock, RunLocked


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
    finally:
        held.release()


def test_a_reused_pid_does_not_keep_a_stale_lock(tmp_path):
    """Same pid, different process start time: the pid now belongs to someone else."""
    path = tmp_path / "lock.json"
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "pid_start": "1",
                                "heartbeat": time.time()}))
    RunLock(path, "run-c").acquire().release()


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
    script = ("import sys, time\nfrom absa_cli.lock import RunLock, RunLocked\n"
              "try:\n    lock = RunLock(sys.argv[1], 'run-e').acquire()\nexcept RunLocked:\n    print('refused')\n"
              "else:\n    print('won'); time.sleep(2); lock.release()\n")
    racers = [subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True)
              for _ in range(4)]
    outcomes = sorted(racer.communicate(timeout=60)[0].strip() for racer in racers)
    assert outcomes == ["refused", "refused", "refused", "won"]
