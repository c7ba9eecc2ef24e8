"""Run directories: ids, layout, status (run/).

``runs/<run-id>/`` holds ``config.yaml`` (the resolved config), ``run.json`` (status, driver, timestamps, latest
figures), ``metrics.jsonl`` (one JSON record per line), ``lock.json`` while a driver runs it (and ``lock.guard``,
the empty file its takeover flocks: run/lock.py), and ``checkpoints/``
(``epoch-NNNN.pt`` after N epochs, ``epoch-NNNN-sample-SSSSSSSSS.pt`` when interrupted S samples into the next,
and ``manifest.json``). Records written after the checkpoint a resume starts from are moved to
``metrics.superseded.jsonl``, so ``metrics.jsonl`` holds one history.
"""

from __future__ import annotations

import enum
import errno
import json
import os
import re
import secrets
import socket
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from absa_cli import config as config_mod
from absa_cli.errors import UserError
from absa_cli.run.lock import RunLock


class Status(str, enum.Enum):
    """A run's status in ``run.json``: the one vocabulary (``driver/outcome.py`` says which ending leaves which)."""

    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"  # an error stopped it; resumable
    INTERRUPTED = "interrupted"  # a signal stopped it; resumable
    DIVERGED = "diverged"  # a non-finite loss or weights, or a collapse; resumable, but would end so again unchanged


STATUSES = tuple(status.value for status in Status)
OTHER_VERSION = "was written by another version of absa"  # a config.yaml that is not damage: see damage()
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def runs_root(runs_dir: str | os.PathLike | None) -> Path:
    """``--runs-dir``, else ``$ABSA_RUNS_DIR``, else ``./runs``."""
    return Path(runs_dir or os.environ.get("ABSA_RUNS_DIR") or "runs").expanduser()


def check_writable(directory: Path, what: str = "runs directory", fix: str = "") -> Path:
    """One line for a directory that cannot take a run's files: a regular file, a path under a file, no write
    permission, a read-only file system. Checked before anything starts (a Ray cluster takes seconds), by writing:
    a temporary folder is made and removed in the nearest existing ancestor, as the run's own would be."""
    fix = fix or ("pass a writable --runs-dir (or set ABSA_RUNS_DIR)" if what == "runs directory" else
                  "make it writable, or copy the run to a writable --runs-dir")
    probe = Path(directory)
    while not probe.exists() and not probe.is_symlink() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        where = "is" if probe == Path(directory) else f"is under {probe}, which is"
        raise UserError(f"{what} {directory} {where} not a directory; {fix}")
    try:
        with tempfile.TemporaryDirectory(dir=probe, prefix=".absa-write-check-"):
            pass
    except OSError as exc:  # the folder exists: "No such file or directory" is a file system that makes none (/proc)
        reason = "no file can be created there" if exc.errno == errno.ENOENT else exc.strerror or exc
        raise UserError(f"{what} {directory} cannot be written ({reason}); {fix}") from None
    return Path(directory)


def check_run_id(run_id: str) -> str:
    """Refuse anything that is not a plain name, so a run id can never leave the runs directory."""
    if not _RUN_ID.fullmatch(run_id) or run_id in (".", ".."):
        shown = run_id if len(run_id) <= 60 else f"{run_id[:40]}…({len(run_id)} characters)"
        raise UserError(f"run id {shown!r} is not a plain name (1 to 128 letters, digits, '.', '_', '-', the first a "
                        f"letter or digit); list run ids with `absa runs list`")
    return run_id


def new_run_id(preset: str) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{preset}-{stamp}-{secrets.token_hex(2)}"


def checkpoint_name(epoch: int, samples_seen: int) -> str:
    """``epoch``: epochs completed; ``samples_seen``: position inside the next one (0 at a boundary)."""
    return f"epoch-{epoch:04d}.pt" if samples_seen == 0 else f"epoch-{epoch:04d}-sample-{samples_seen:09d}.pt"


# The fields of run.json that absa reads, and their types: a hand-edited or foreign file with another type reads as
# damaged (one run listed so), never as a traceback in `absa runs list` for every run.
_INFO_TYPES: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(("status", "preset", "host", "started_at", "ended_at", "resumed_at", "error", "uid",
                     "checkpoint"), (str,)),
    **dict.fromkeys(("pid", "last_epoch", "epochs", "updates", "resumes", "global_batch_size", "num_workers",
                     "max_workers", "num_parameters"), (int,)),
    **dict.fromkeys(("best_test_acc", "test_acc", "wall_s"), (int, float)),
}


def list_runs(root: Path) -> list["RunDir"]:
    """Every run under ``root``, oldest first (by the start time in ``run.json``)."""
    if not root.is_dir():
        return []
    runs = [RunDir(path) for path in root.iterdir() if (path / "run.json").is_file()]
    return sorted(runs, key=lambda run: (str(run.info().get("started_at") or ""), run.id))


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.id = self.path.name

    @classmethod
    def open(cls, runs_dir: Path, run_id: str) -> "RunDir":
        """An existing run; one line naming the problem otherwise."""
        path = Path(runs_dir) / check_run_id(run_id)
        if not (path / "run.json").is_file():  # what makes a run, as for list_runs: a damaged one is still found
            raise UserError(no_run(run_id, runs_dir))
        return cls(path)

    @classmethod
    def create(cls, runs_dir: Path, config: config_mod.RunConfig, run_id: str | None = None) -> "RunDir":
        """A new run directory; ``run_id``: a name drawn beforehand (``absa train --submit`` names the run before
        the job starts it), refused if taken."""
        run = cls._made(runs_dir, config, run_id)
        run._start(config)
        return run

    @classmethod
    def create_held(cls, runs_dir: Path, config: config_mod.RunConfig,
                    run_id: str | None = None) -> tuple["RunDir", RunLock]:
        """``create``, with this process holding the run's lock before run.json makes the folder a run: `runs list`
        never sees a new run without its driver (``running (driver gone)``)."""
        run = cls._made(runs_dir, config, run_id)
        lock = run.lock().acquire()  # a fresh directory: nobody else can hold it
        try:
            run._start(config)
        except BaseException:
            lock.release()
            raise
        return run, lock

    @classmethod
    def _made(cls, runs_dir: Path, config: config_mod.RunConfig, run_id: str | None) -> "RunDir":
        try:
            runs_dir.mkdir(parents=True, exist_ok=True)
        except OSError:  # made unusable since it was checked: the same line as check_writable's
            check_writable(runs_dir)
            raise
        if run_id is not None:
            try:
                (runs_dir / check_run_id(run_id)).mkdir()
            except FileExistsError:
                raise UserError(f"run {run_id} exists already in {runs_dir}; continue it with `absa resume "
                                f"{run_id}`") from None
        while run_id is None:
            drawn = check_run_id(new_run_id(config.preset or "run"))
            try:
                (runs_dir / drawn).mkdir()
                run_id = drawn
            except FileExistsError:  # same second, same suffix: draw again
                continue
        return cls(runs_dir / run_id)

    def _start(self, config: config_mod.RunConfig) -> None:
        self.checkpoints_dir.mkdir()
        self.config_path.write_text(config_mod.to_yaml(config))
        self.write_info(status=Status.RUNNING, preset=config.preset, host=socket.gethostname(), pid=os.getpid(),
                        started_at=_now(), last_epoch=0, epochs=config.epochs, uid=secrets.token_hex(8))

    def uid(self) -> str | None:
        """The run's own id, drawn once at creation and kept in run.json: its checkpoints carry it, so a renamed
        run directory still owns them and another run's copied in does not (None for a run made before)."""
        uid = self.info().get("uid")
        return uid if isinstance(uid, str) else None

    def lock(self) -> RunLock:
        return RunLock(self.lock_path, self.id)

    @property
    def lock_path(self) -> Path:
        return self.path / "lock.json"

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def info_path(self) -> Path:
        return self.path / "run.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def superseded_path(self) -> Path:
        return self.path / "metrics.superseded.jsonl"

    def metrics_size(self) -> int:
        return self.metrics_path.stat().st_size if self.metrics_path.exists() else 0

    def rewind_metrics(self, size: int) -> int:
        """Cut ``metrics.jsonl`` back to ``size`` bytes (its size when a checkpoint was written), appending the
        cut records to ``metrics.superseded.jsonl``; returns how many records were moved.

        The cut is always at a line's end: a file that ends inside a line (shorter than ``size``: writes lost to a
        crash) has that partial line moved aside too, so the next record starts a line of its own instead of joining
        it into one bad line; and a ``size`` that is no longer a line's end (counted before such a mend) cuts at the
        line's start."""
        if not self.metrics_path.exists():
            return 0
        with self.metrics_path.open("r+b") as handle:
            data = handle.read()
            cut = data.rfind(b"\n", 0, min(size, len(data))) + 1
            if cut >= len(data):
                return 0
            tail = data[cut:]
            with self.superseded_path.open("ab") as superseded:
                superseded.write(tail if tail.endswith(b"\n") else tail + b"\n")
                superseded.flush()
                os.fsync(superseded.fileno())
            handle.truncate(cut)
        return tail.count(b"\n") + (not tail.endswith(b"\n"))

    def records(self, kind: str | None = None) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        records = []
        for line in self.metrics_path.read_bytes().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:  # a line cut by a crash mid-write (or not UTF-8): the records before it stand
                continue
        records = [r for r in records if isinstance(r, dict)]  # absa writes objects only; anything else is damage
        return [r for r in records if kind is None or r.get("kind") == kind]

    def load_config(self) -> config_mod.RunConfig:
        """The run's saved config; one line naming the damage if it is missing or unreadable."""
        config, problem = self._read_config()
        if config is None:
            raise UserError(unusable(self.id, problem))
        return config

    def damage(self) -> str | None:
        """What is wrong with this run's own files (``run.json``, ``config.yaml``), or None."""
        info = self.info()
        if info.get("status") == "damaged":
            return info.get("error")
        return self._read_config()[1]

    def _read_config(self) -> tuple[config_mod.RunConfig | None, str | None]:
        """(the saved config, None), or (None, what is wrong with ``config.yaml``)."""
        try:
            return config_mod.from_yaml(self.config_path.read_text()), None
        except OSError as exc:
            problem = "is missing" if isinstance(exc, FileNotFoundError) else f"cannot be read ({exc.strerror})"
        except config_mod.OtherVersionConfig as exc:
            problem = f"{OTHER_VERSION} ({exc})"
        except config_mod.ConfigError as exc:
            problem = f"is not a valid config ({exc})"
        return None, f"{self.config_path} {problem}"

    def info(self) -> dict[str, Any]:
        """``run.json``; a damaged one reads as status ``damaged`` (listed, never a traceback)."""
        try:
            info = json.loads(self.info_path.read_text()) if self.info_path.exists() else {}
        except ValueError:
            return {"status": "damaged", "error": f"{self.info_path} is not valid JSON"}
        if not isinstance(info, dict):
            return {"status": "damaged", "error": f"{self.info_path} is not a JSON object"}
        for key, value in info.items():
            kinds = _INFO_TYPES.get(key)
            if kinds and value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
                return {"status": "damaged", "error": f"{self.info_path}: {key} is {value!r}, not "
                                                      f"{' or '.join(kind.__name__ for kind in kinds)}"}
        if info.get("status", Status.RUNNING) not in STATUSES:
            return {"status": "damaged", "error": f"{self.info_path}: status {info['status']!r} is not one of "
                                                  f"{', '.join(STATUSES)}"}
        return info

    def write_info(self, **fields: Any) -> None:
        """Update ``run.json`` atomically with ``fields``."""
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"unknown run status {fields['status']!r}")
        if isinstance(fields.get("status"), Status):
            fields["status"] = fields["status"].value
        self.replace_info({**self.info(), **fields, "updated_at": _now()})

    def save_config(self, text: str) -> None:
        """Write ``config.yaml`` atomically (a resume's overrides; checked by ``config.resumed_with`` first)."""
        tmp = self.config_path.with_suffix(".yaml.tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)

    def replace_info(self, info: dict[str, Any]) -> None:
        """Write ``run.json`` as ``info``, whole and atomically (``write_info`` updates fields of it)."""
        tmp = self.info_path.with_suffix(".json.tmp")
        with tmp.open("w") as handle:
            handle.write(json.dumps(info, indent=2) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.info_path)

    def finish(self, status: Status, **fields: Any) -> None:
        self.write_info(status=status, ended_at=_now(), **fields)


def no_run(run_id: str, runs_dir: Path) -> str:
    """The line for a run id with no run behind it, the same from every command; a runs directory that is not there
    at all (a mistyped --runs-dir) is named as such."""
    if not Path(runs_dir).exists():
        return (f"no run {run_id!r}: the runs directory {runs_dir} does not exist; pass the folder runs are in with "
                f"--runs-dir (or set ABSA_RUNS_DIR)")
    return (f"no run {run_id!r} in {runs_dir}; list runs with `absa runs list` (or pass --runs-dir / set "
            f"ABSA_RUNS_DIR)")


def unusable(run_id: str, problem: str) -> str:
    """The line for a run that cannot continue, from its ``damage()``: a file as another absa version wrote it is not
    damage, and restoring it from a copy would not help."""
    if OTHER_VERSION in problem:
        return (f"run {run_id} cannot continue with this version of absa: {problem}; use the absa version that made "
                f"it, or start a new run")
    return f"run {run_id} is damaged: {problem}; restore the file from a copy, or start a new run"


def _now() -> str:
    return datetime.fromtimestamp(time.time(), tz=timezone.utc).isoformat(timespec="seconds")
