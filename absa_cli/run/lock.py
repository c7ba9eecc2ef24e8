"""One driver per run: a lock file with host, pid and a heartbeat (run/: stdlib only).

``runs/<id>/lock.json`` is written whole to a temporary file and hard-linked into place, which fails if the lock
exists: two drivers cannot both create it, and nobody ever reads a half-written lock. A lock is *stale* when its
driver is gone: on this host, the pid no longer runs (or now belongs to another process, told apart by its start
time); on another host, the heartbeat is older than ``STALE_AFTER_S``. A stale lock is taken over; a live one is
refused with one line naming the driver. Deciding and taking over happen under an flock on ``lock.guard``, so two
drivers that both find the same stale lock cannot both take it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from absa_cli.errors import UserError

HEARTBEAT_S = 5.0
STALE_AFTER_S = 60.0


class RunLocked(UserError):
    """Another live driver holds the run."""


class LockLost(RuntimeError):
    """This driver's lock was taken over: another driver found its heartbeat stale (e.g. a shared file system that
    stalled this host's writes for over ``STALE_AFTER_S``) and drives the run now."""


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), None when it does not run or is a zombie."""
    if not Path("/proc/self/stat").exists():  # not Linux: whether the pid runs is all we can tell
        return "?" if _pid_runs(pid) else None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]


def _pid_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe(holder: dict[str, Any]) -> str:
    age = time.time() - float(holder.get("heartbeat", 0))
    return f"pid {holder.get('pid')} on {holder.get('host')} (heartbeat {age:.0f} s ago)"


def is_stale(holder: dict[str, Any], now: float | None = None) -> bool:
    if holder.get("host") == socket.gethostname():
        start = _process_start(int(holder.get("pid", -1)))
        return start is None or start != holder.get("pid_start", start)
    return (now or time.time()) - float(holder.get("heartbeat", 0)) > STALE_AFTER_S


def read(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (ValueError, OSError):  # not written by this version (locks are linked in whole), or not a readable
        holder = None  # file (a folder, no permission): judge it by its age
    if not (isinstance(holder, dict) and isinstance(holder.get("host"), str) and isinstance(holder.get("pid"), int)
            and isinstance(holder.get("heartbeat"), (int, float))):  # JSON, but not a lock's: by its age too
        try:
            return {"host": None, "pid": -1, "heartbeat": Path(path).stat().st_mtime}
        except FileNotFoundError:  # released meanwhile
            return None
    return holder


class RunLock:
    """Held from ``acquire`` to ``release``; a daemon thread refreshes the heartbeat meanwhile."""

    def __init__(self, path: Path, run_id: str) -> None:
        self.path = Path(path)
        self.run_id = run_id
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.taken_by: str | None = None  # set by the heartbeat thread when another driver took the run over
        self.took_over: str | None = None  # the stale holder this lock replaced (``acquire``), described
        self._me = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _process_start(os.getpid())}

    def acquire(self) -> "RunLock":
        with self._guard():
            holder = read(self.path)
            if holder is not None:
                if not is_stale(holder) and holder.get("host") is None:  # read() could not parse it
                    age = time.time() - float(holder.get("heartbeat", 0))
                    raise RunLocked(f"run {self.run_id}: its lock file {self.path} cannot be read (damaged, or written "
                                    f"by another version of absa) and is {age:.0f} s old; if no driver runs this run, "
                                    f"delete the file, or wait {max(STALE_AFTER_S - age, 0):.0f} s until it counts as "
                                    f"stale")
                if not is_stale(holder):
                    raise RunLocked(f"run {self.run_id} is being driven by {describe(holder)}; stop that driver "
                                    f"first (Ctrl-C), or wait for it to finish")
                if holder.get("host") is None:
                    self.took_over = f"an unreadable lock file, {time.time() - float(holder['heartbeat']):.0f} s old"
                elif holder.get("host") == socket.gethostname():
                    self.took_over = f"{describe(holder)}, which is no longer running"
                else:  # it may still be alive, cut off: it stops before its next write (``check``)
                    self.took_over = f"{describe(holder)}, silent for over {STALE_AFTER_S:.0f} s"
                try:
                    self.path.unlink(missing_ok=True)  # a stale lock: take it over
                except OSError as exc:  # a folder in its place, or a file this user cannot remove
                    raise RunLocked(f"run {self.run_id}: its lock file {self.path} cannot be removed "
                                    f"({exc.strerror}); remove it by hand if no driver runs this run") from None
            tmp = self._write_tmp()
            try:
                os.link(tmp, self.path)
            except FileExistsError:  # a driver that does not take the guard (another version) got in first
                raise RunLocked(f"run {self.run_id}: another driver took it at the same time; try again") from None
            finally:
                tmp.unlink(missing_ok=True)
        self._thread = threading.Thread(target=self._beat, name="absa-run-lock", daemon=True)
        self._thread.start()
        return self

    def _write_tmp(self) -> Path:
        tmp = self.path.with_name(f".lock.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**self._me, "heartbeat": time.time()}))
        return tmp

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with self._guard():
                if not self._mine():  # taken over (we looked dead from another host): never overwrite the new holder
                    holder = read(self.path)
                    self.taken_by = describe(holder) if holder else "another driver (the lock file is gone)"
                    return
                os.replace(self._write_tmp(), self.path)

    def check(self) -> None:
        """``LockLost`` if another driver took the run over: call before writing anything to the run."""
        if self.taken_by is not None:
            raise LockLost(f"run {self.run_id} was taken over by {self.taken_by}, which found this driver's heartbeat "
                           f"stale; this driver stops without writing anything more (the run is driven there now)")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._guard():
            if self._mine():
                self.path.unlink(missing_ok=True)

    def _mine(self) -> bool:
        holder = read(self.path)
        return holder is not None and holder.get("pid") == self._me["pid"] and holder.get("host") == self._me["host"]

    @contextmanager
    def _guard(self) -> Iterator[None]:
        with self.path.with_name("lock.guard").open("a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)  # released when the file closes
            yield

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
