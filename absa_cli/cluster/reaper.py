"""The local Ray cluster dies with the driver that started it, even when that driver is SIGKILLed.

Why: ``ray.init`` starts the GCS, the raylet, the dashboard, the log monitor and, under the raylet, the dashboard
and runtime-env agents and the workers, all as descendants of the driver. ``ray.shutdown`` stops them; a driver
that is SIGKILLed (or OOM-killed) cannot, and Ray's own fate-sharing leaves some of them (the agents, the
dashboard) running for 30-90 s, holding memory and CPU while the user starts the next ``absa``.

How: just before starting a local cluster, the ``absa`` command (not an in-process caller, whose other children
are not absa's to end) starts this file as a small separate process (its own
session, so a Ctrl-C meant for the driver does not reach it) and keeps the write end of a pipe to it. The reaper
notes the driver's descendants (pid and start time, read from ``/proc``) once a second. When the pipe reaches end
of file, the driver has exited, however it exited: the kernel closes the pipe of a killed process too. The reaper
then sends SIGTERM to every noted process still alive (same pid and same start time, so a reused pid is never
hit) and to its descendants, waits up to ``GRACE_S``, sends SIGKILL to what is left, and exits. In absa's private
network namespace (absa_cli.cluster.netns), where the cluster's processes are the only ones, every other process
of the namespace goes too: one started in the driver's last second, not yet noted and then orphaned, was left
running (once in five SIGKILLs during the cluster's start, in a review). After a normal
``ray.shutdown`` there is nothing left to signal. Linux only (``/proc``); elsewhere nothing is started.

It imports only the standard library and runs as a plain script, so it starts in milliseconds.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

GRACE_S = 3.0  # from SIGTERM to SIGKILL
POLL_S = 1.0  # how often the driver's descendants are noted

_reaper: subprocess.Popen | None = None  # this process's reaper (its stdin is the pipe that must stay open)


def available() -> bool:
    """Whether a reaper can run here: it reads ``/proc`` (Linux)."""
    return os.path.isdir("/proc/self")


def start() -> subprocess.Popen | None:
    """Start the reaper for this process's local cluster (once; Linux only). Call just before ``ray.init`` starts
    one, so that a driver killed while it starts still takes it along: processes are noted as they come."""
    global _reaper
    if _reaper is not None or not available():
        return _reaper
    _reaper = subprocess.Popen([sys.executable, "-I", "-S", "-u", os.path.abspath(__file__), str(os.getpid())],
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True, close_fds=True)
    return _reaper


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time in clock ticks) of every running process visible in ``/proc`` (zombies, which
    have exited and wait only for their parent to read their status, are left out)."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                stat = handle.read().decode(errors="replace")
        except OSError:  # exited meanwhile
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": state, ppid, ..., starttime (#22)
        if fields[0] != "Z":
            table[int(name)] = (int(fields[1]), int(fields[19]))
    return table


def descendants(roots: set[int], table: dict[int, tuple[int, int]]) -> dict[int, int]:
    """pid -> start time of every process below ``roots`` in ``table`` (the roots themselves excluded)."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, todo = {}, list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found[child] = table[child][1]
                todo.append(child)
    return found


def _alive(noted: dict[int, int]) -> dict[int, int]:
    """The noted processes still running (same start time), with everything now below them."""
    table = _processes()
    live = {pid: start for pid, start in noted.items() if table.get(pid, (0, None))[1] == start}
    return {**live, **descendants(set(live), table)}


def _signal_all(processes: dict[int, int], signum: int) -> None:
    for pid in processes:
        try:
            os.kill(pid, signum)
        except OSError:  # exited meanwhile
            pass


def namespace_mates(driver: int) -> dict[int, int]:
    """pid -> start time of every process in this network namespace but this one and the driver (which closes the
    pipe as it exits, and may not have exited yet), if it is absa's private one and the driver made it (marked by
    ``ABSA_PRIVATE_NETWORK=inside`` and ``ABSA_PRIVATE_NETWORK_OWNER=<driver pid>``, and holding only ``lo``); else
    none."""
    try:
        with open("/proc/self/net/dev") as handle:
            interfaces = [line.split(":", 1)[0].strip() for line in handle.readlines()[2:] if ":" in line]
        mine = os.readlink("/proc/self/ns/net")
    except OSError:
        return {}
    made_by_driver = os.environ.get("ABSA_PRIVATE_NETWORK_OWNER") == str(driver)  # not one it was started inside
    if os.environ.get("ABSA_PRIVATE_NETWORK") != "inside" or not made_by_driver or interfaces != ["lo"]:
        return {}
    mates = {}
    for pid, (_, start) in _processes().items():
        try:
            if pid not in (os.getpid(), driver) and os.readlink(f"/proc/{pid}/ns/net") == mine:
                mates[pid] = start
        except OSError:  # exited meanwhile, or not ours to look at
            pass
    return mates


def watch(driver: int) -> None:
    noted: dict[int, int] = {}
    while True:
        noted.update(descendants({driver}, _processes()))
        noted.pop(os.getpid(), None)  # the reaper is the driver's child too
        ready, _, _ = select.select([sys.stdin.buffer], [], [], POLL_S)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break  # end of file: the driver is gone
    left = _alive({**noted, **namespace_mates(driver)})
    _signal_all(left, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = _alive(left)
    _signal_all(left, signal.SIGKILL)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver's terminal is not ours
    watch(int(sys.argv[1]))
