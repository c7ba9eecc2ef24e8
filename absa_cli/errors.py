"""Errors a user can cause.

A ``UserError`` is printed by the CLI as one line (no traceback) and exits with code 2. Its message must name
the problem and the fix. Internal errors are not ``UserError`` and keep their traceback.
"""

from __future__ import annotations

import re

_ESCAPES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # terminal colours (Ray's errors carry them)


class UserError(Exception):
    """Bad input from the user: wrong key, wrong type, missing file, unknown name."""

    exit_code = 2


class DataNotFoundError(UserError):
    """A dataset's files are not where the config says they should be."""


class BadDataError(UserError):
    """A dataset file is there but does not hold what its format promises: cut short, another format, pixels of the
    wrong shape, labels outside the classes. Training on it would crash mid-run or, worse, learn from wrong data."""


def first_line(error: BaseException | str, typed: bool = False, limit: int = 300) -> str:
    """The first line of an error's message, for one-line reports and records, without terminal escape codes: an
    exception with no message gives its type's name; ``typed`` prefixes the type (``RayActorError: ...``)."""
    text = _ESCAPES.sub("", str(error) if isinstance(error, BaseException) else error).strip()
    line = text.splitlines()[0] if text else ""
    if isinstance(error, BaseException) and (typed or not line):
        line = f"{type(error).__name__}: {line}" if line else type(error).__name__
    return line[:limit]


def missing_folder(folder) -> str:
    """Why a file cannot be created in ``folder`` (a ``Path`` that is not a directory), with the first half of the
    fix, for a caller to finish with "or choose another ...": the folder is missing, or a file stands in its path."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        return f"{existing} is a file, not a folder; move it"
    return f"the folder {folder} does not exist; create it"


def counted(count: int, noun: str) -> str:
    """``1 worker``, ``2 workers``, ``1,024 updates``: a count (thousands grouped) and its noun, for one-line
    messages."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def duration(seconds: float) -> str:
    """A time in the unit that reads best, three significant digits: ``412 ns``, ``35.2 µs``, ``1.2 ms``, ``4.5 s``,
    ``12 min``, ``3.1 h`` (``6.08e-06 s`` is how a format spec alone writes 6 µs)."""
    size = abs(float(f"{seconds:.3g}"))  # as printed: 0.9996 s is 1 s, not 1e+03 ms
    if size == 0:
        return "0 s"
    units = ((1e-6, 1e9, "ns"), (1e-3, 1e6, "µs"), (1, 1e3, "ms"), (600, 1, "s"), (7200, 1 / 60, "min"))
    for limit, scale, unit in units:
        if size < limit:
            return f"{seconds * scale:.3g} {unit}"
    hours = seconds / 3600
    return f"{hours:.3g} h" if abs(hours) < 1000 else f"{hours:,.0f} h"
