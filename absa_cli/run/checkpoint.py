"""TrainState files: atomic writes, a sha256 manifest, safe loads (run/: torch only when a file is written or read).

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)``: a file carrying a pickled object that would run code is refused.
Writes go to a temporary file in the same directory, are fsync'ed, then renamed over the target, so a crash leaves
either the old file or the new one, never half of one.

``CheckpointStore`` keeps a run's ``checkpoints/`` folder: ``manifest.json`` lists every checkpoint in the order
written, with its size and sha256, so a truncated or corrupted file is caught before ``torch.load`` sees it, and
the newest *good* checkpoint is the one a resume or a restart uses.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from absa_cli.errors import UserError, first_line

FORMAT_VERSION = 1
_REFUSED = re.compile(r"GLOBAL ([\w.]+)")  # the callable a refused pickle names
MANIFEST = "manifest.json"


class CheckpointError(UserError):
    """A checkpoint that is missing, truncated, corrupted or not an absa checkpoint."""


class _HashingWriter:
    """A file wrapper that hashes what torch.save writes, so the sha256 costs no second read."""

    def __init__(self, handle) -> None:
        self.handle = handle
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


def save(path: Path, state: dict[str, Any]) -> tuple[str, int]:
    """Write ``state`` atomically; returns the file's (sha256, size in bytes)."""
    import torch  # here, not at module level: reading a manifest (`absa runs show`) needs no torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format_version": FORMAT_VERSION, **state}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            writer = _HashingWriter(handle)
            torch.save(payload, writer)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return writer.sha256.hexdigest(), writer.size


def load(path: Path) -> dict[str, Any]:
    """Load safely on the CPU; ``CheckpointError`` (one line) for anything that is not a good checkpoint.

    If the folder has a manifest that lists the file, its size and sha256 are checked first.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a .pt file from a run's checkpoints/ folder")
    entry = CheckpointStore(path.parent).entry(path.name)
    if entry is not None:
        try:
            verify(path, entry)
        except CheckpointError as exc:  # the folder may hold an older one that verifies: say how to use it
            raise CheckpointError(f"{exc}; pass an older checkpoint from {path.parent}, or that folder (or its run "
                                  f"directory) to read the newest one that verifies") from None
    return _load_unverified(path, fix=_ANOTHER)


_ANOTHER = ("pass another .pt file from a run's checkpoints/ folder (`absa runs show RUN_ID` verifies each), or the "
            "run's folder")


def _load_unverified(path: Path, fix: str = "") -> dict[str, Any]:
    """``load`` without the manifest check; ``fix`` ends the line for a file that is damaged or not absa's (a run's
    own fallback to an older checkpoint says its own)."""
    import pickle

    import torch

    try:
        with open(path, "rb") as file:
            head = file.read(4)
        if head.strip(b"\0") == b"":  # a write cut short by a crash or a full disk
            raise CheckpointError(f"checkpoint {path} cannot be loaded safely: it is empty (or zeros): a write was "
                                  f"cut short{_then(fix)}")
        if head[:2] != b"PK":  # torch.save writes a zip archive
            raise CheckpointError(f"checkpoint {path} cannot be loaded safely: it is not a PyTorch checkpoint "
                                  f"archive{_then(fix)}")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's text advises weights_only=False: never repeated here
        refused = _REFUSED.search(str(exc))
        what = f"loading it would call {refused.group(1)}" if refused else "it holds data other than tensors"
        raise CheckpointError(f"checkpoint {path} cannot be loaded safely: {what}, which absa's safe load "
                              f"(weights_only) refuses; absa writes only tensors and plain data, so it is not an "
                              f"absa checkpoint or was altered") from None
    except CheckpointError:
        raise
    except Exception as exc:  # RuntimeError, EOFError, OSError, ... for a damaged archive or an unreadable file
        reason = first_line(exc, limit=200).split(". ")[0]  # torch's first sentence; the rest is advice
        raise CheckpointError(f"checkpoint {path} cannot be loaded safely ({reason}); "
                              f"it is truncated, corrupted or not an absa checkpoint{_then(fix)}") from None
    version = state.get("format_version") if isinstance(state, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format {version}, newer than this absa reads (format "
                              f"{FORMAT_VERSION}); use the absa version that wrote it")
    if version != FORMAT_VERSION or "model" not in state:
        raise CheckpointError(f"checkpoint {path} is not an absa checkpoint (format {FORMAT_VERSION}){_then(fix)}")
    return state


def _then(fix: str) -> str:
    return f"; {fix}" if fix else ""


def check_identity(file: str, state: dict[str, Any], run_uid: str | None, run_id: str,
                   keys: dict[str, str]) -> None:
    """``CheckpointError`` (one line) for a checkpoint that is not this run's: written by another run (another uid,
    kept in run.json; where either side has none, another run id) or with another recipe (``config.identity`` keys
    that differ, e.g. a config.yaml edited to another model width). One from before checkpoints named their run is
    accepted."""
    from absa_cli.config import identity_differences

    owner = state.get("run")
    if not isinstance(owner, dict):
        return
    both_named = owner.get("uid") is not None and run_uid is not None  # else (a run made before uids): the ids
    if (owner.get("uid") != run_uid) if both_named else (owner.get("id") != run_id):
        other = f"another run named {run_id!r}" if owner.get("id") == run_id else f"run {owner.get('id')!r}"
        raise CheckpointError(f"checkpoint {file} belongs to {other}, not {run_id!r} (copied from another run's "
                              f"checkpoints/?)")
    differences = identity_differences(owner.get("config") or {}, keys)
    if differences:
        shown = ", ".join(differences[:3]) + (f" and {len(differences) - 3} more" if len(differences) > 3 else "")
        raise CheckpointError(f"checkpoint {file} was written with another config: {shown} (config.yaml edited "
                              f"since?)")


def owner_line(state: dict[str, Any]) -> str:
    """Whose checkpoint this is, for `absa hessian`: ``run X (preset P, config 1a2b…), epoch N`` (after N epochs),
    or ``…, 1,344 samples into epoch N`` (stopped mid-epoch)."""
    owner = state.get("run") if isinstance(state.get("run"), dict) else {}
    samples, epoch = state.get("samples_seen"), state.get("epoch", "?")
    where = (f"{samples:,} samples into epoch {epoch + 1}" if isinstance(samples, int) and samples and
             isinstance(epoch, int) else f"epoch {epoch}")  # epochs counted from 1, as the console counts them
    if not owner:
        return f"a checkpoint that names no run (written before absa recorded it; preset " \
               f"{state.get('preset') or '?'}), {where}"
    return f"run {owner.get('id')} (preset {state.get('preset') or '?'}, config {owner.get('fingerprint')}), {where}"


@dataclass(frozen=True)
class Entry:
    """One manifest line: where training stood when the file was written, and what the file must hash to."""

    file: str
    sha256: str
    bytes: int
    epoch: int  # epochs completed
    samples_seen: int  # position inside the next epoch (0 at an epoch boundary)
    updates: int
    written_at: str


_FILE = re.compile(r"epoch-\d{4,}(-sample-\d{9,})?\.pt")  # what rundir.checkpoint_name writes, and nothing else
_TYPES = {"file": str, "sha256": str, "bytes": int, "epoch": int, "samples_seen": int, "updates": int,
          "written_at": str}


def _entry(item: Any) -> Entry:
    """A manifest line, checked: each field of its type, and a file name absa writes. A name with a path in it
    (``../../x``) would have this folder's pruning delete, and `absa runs show` hash, a file outside the run."""
    if not isinstance(item, dict):
        raise TypeError(f"an entry is {type(item).__name__}, not an object")
    entry = Entry(**item)  # TypeError for a missing or unknown field
    for name, kind in _TYPES.items():
        value = getattr(entry, name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise TypeError(f"{name} {value!r} is not {kind.__name__}")
    if not _FILE.fullmatch(entry.file):
        raise ValueError(f"it lists {entry.file!r}, which is not a checkpoint file name absa writes "
                         f"(epoch-NNNN.pt or epoch-NNNN-sample-NNNNNNNNN.pt)")
    return entry


def verify(path: Path, entry: Entry) -> None:
    """Size, then sha256: a truncated file and a corrupted one each get their own one-line reason."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path.name} is missing")
    size = path.stat().st_size
    if size != entry.bytes:
        raise CheckpointError(f"checkpoint {path.name} is truncated ({size} of {entry.bytes} bytes)")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != entry.sha256:
        raise CheckpointError(f"checkpoint {path.name} is corrupted (sha256 differs from {MANIFEST})")


class CheckpointStore:
    """A run's ``checkpoints/`` folder and its manifest (oldest entry first)."""

    def __init__(self, directory: Path, keep_last: int = 3) -> None:
        self.directory = Path(directory)
        self.keep_last = keep_last

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST

    def entries(self) -> list[Entry]:
        if not self.manifest_path.is_file():
            return []
        try:
            data = json.loads(self.manifest_path.read_text())
            return [_entry(item) for item in data["checkpoints"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{self.manifest_path} is damaged ({type(exc).__name__}: {exc}); without it no "
                                  f"checkpoint can be verified: restore it, or start a new run") from None

    def epoch_entries(self) -> list[Entry]:
        """The checkpoints written at epoch boundaries (not mid-epoch on a stop), oldest epoch first."""
        return sorted((e for e in self.entries() if e.samples_seen == 0), key=lambda e: e.epoch)

    def entry(self, name: str) -> Entry | None:
        return next((e for e in self.entries() if e.file == name), None) if self.manifest_path.is_file() else None

    def unlisted(self) -> CheckpointError | None:
        """The error for checkpoint files with no manifest to verify them (never loaded), or None."""
        if self.manifest_path.is_file() or not any(self.directory.glob("epoch-*.pt")):
            return None
        return CheckpointError(f"{self.directory} holds checkpoints but no {MANIFEST} to verify them against; "
                               f"restore it, or start a new run (absa picks no unverified checkpoint to resume "
                               f"or probe; `absa hessian FILE` reads one it is given by name, safely)")

    def save(self, name: str, state: dict[str, Any]) -> Entry:
        """Write the file, then the manifest (a crash in between leaves an unlisted file, never a bad entry);
        then drop the oldest beyond ``keep_last``."""
        sha256, size = save(self.directory / name, state)
        entry = Entry(file=name, sha256=sha256, bytes=size, epoch=int(state["epoch"]),
                      samples_seen=int(state["samples_seen"]), updates=int(state["updates"]),
                      written_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        entries = [e for e in self.entries() if e.file != name] + [entry]
        kept, dropped = entries[-self.keep_last:], entries[:-self.keep_last]
        self._write_manifest(kept)
        for old in dropped:
            (self.directory / old.file).unlink(missing_ok=True)
        return entry

    def latest(self, report: Callable[[str], None],
               accept: Callable[[str, dict[str, Any]], None] | None = None) -> tuple[Entry, dict[str, Any]] | None:
        """The newest checkpoint that verifies and loads (and that ``accept(file, state)`` does not refuse with a
        ``CheckpointError``: another run's); each bad one is reported in one line and skipped.

        None when no checkpoint was ever written; ``CheckpointError`` when some were but none is usable.
        """
        entries = self.entries()
        if not entries and self.unlisted() is not None:
            raise self.unlisted()
        problems = []
        for entry in reversed(entries):
            try:
                verify(self.directory / entry.file, entry)
                state = _load_unverified(self.directory / entry.file)
                if accept is not None:
                    accept(entry.file, state)
                return entry, state
            except CheckpointError as exc:
                problems.append(str(exc))
                older = "falling back to the previous one" if entry is not entries[0] else "no older checkpoint"
                report(f"{exc}; {older}")
        if problems:
            raise CheckpointError(f"no usable checkpoint in {self.directory} ({len(problems)} checked; newest: "
                                  f"{problems[0]})")
        return None

    def _write_manifest(self, entries: list[Entry]) -> None:
        tmp = self.manifest_path.with_suffix(".json.tmp")
        with tmp.open("w") as handle:
            json.dump({"format_version": FORMAT_VERSION, "checkpoints": [asdict(e) for e in entries]}, handle,
                      indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.manifest_path)
        _fsync_dir(self.directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
