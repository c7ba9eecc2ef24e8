"""Where a dataset's files should be, the one-line errors when they are not (or are not what they should be), and
the optional download.

Every on-disk loader checks its files through ``require_files`` before reading anything, so a wrong ``data.root``
fails at once with the expected path and layout, never with a traceback from deep inside a reader. What a file
holds is checked as it is read (``absa_cli.data.checks``) and refused with ``bad_data``: the dataset is opened
before a run directory or a Ray cluster exists, so a malformed file stops ``absa train`` there, in one line.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path

from absa_cli.catalog import DatasetSpec
from absa_cli.errors import BadDataError, DataNotFoundError, first_line


def dataset_dir(spec: DatasetSpec, root: str | os.PathLike) -> Path:
    """``root / spec.folder``: the directory holding this dataset's files."""
    return Path(root).expanduser() / spec.folder


def _one_line(message: str) -> str:
    return " ".join(message.splitlines())  # a path may hold a newline; the CLI promises one line


def _placement_fix(spec: DatasetSpec, download_requested: bool) -> str:
    if spec.downloadable:
        return "run with data.download=true to fetch it, or set data.root=DIR (or ABSA_DATA) to where it is"
    if download_requested:
        return ("it cannot be downloaded automatically: put the files there, "
                "or set data.root=DIR (or ABSA_DATA) to where they are")
    return "put the files there, or set data.root=DIR (or ABSA_DATA) to where they are"


def not_found(spec: DatasetSpec, expected: Path, *, download_requested: bool = False) -> DataNotFoundError:
    """The error for a missing file or directory: one line naming the path, the layout and the fix."""
    relative = "" if expected.is_absolute() else f", relative to the current directory {Path.cwd()}"
    message = (f"{spec.name} data not found: expected {expected}{relative} (layout: {spec.layout}); "
               f"{_placement_fix(spec, download_requested)}")
    return DataNotFoundError(_one_line(message))


def no_images(spec: DatasetSpec, where: str, *, download_requested: bool = False) -> DataNotFoundError:
    """The error for a split that opens but holds no sample: said here, not later as a batch-size limit of 0 or a
    crash after the first epoch. ``where`` completes "no images were found ..." (the directory or files looked at)."""
    message = (f"{spec.name}: no images were found {where} (layout: {spec.layout}); "
               f"{_placement_fix(spec, download_requested)}")
    return DataNotFoundError(_one_line(message))


def bad_data(spec: DatasetSpec, path: Path, problem: str, fix: str | None = None) -> BadDataError:
    """The error for a file that is there but malformed: ``"<name>: <path> <problem>; <fix>"`` on one line. The
    default fix is to replace the file with the official one (by a fresh download where absa can fetch it)."""
    if fix is None:
        fix = (f"delete it and run with data.download=true to fetch the official file again, or put a good copy there "
               f"(layout: {spec.layout})" if spec.downloadable else
               f"replace it with the file from the official release (layout: {spec.layout})")
    return BadDataError(_one_line(f"{spec.name}: {path} {problem}; {fix}"))


def unreadable(spec: DatasetSpec, path: Path, error: OSError, doing: str = "read") -> BadDataError:
    """The error for a file or folder the system refuses (permissions, I/O): its reason, and where a readable copy
    may be pointed to instead."""
    return bad_data(spec, path, f"cannot be {doing} ({_reason(error)})",
                    fix="make it readable, or set data.root=DIR (or ABSA_DATA) to a readable copy")


def download_failed(spec: DatasetSpec, url: str, error: BaseException, expected: Path) -> DataNotFoundError:
    """The error for a download that did not complete (no network, a proxy, a server error): the host, the reason,
    and that placing the files by hand works as well."""
    host = urllib.parse.urlsplit(url).hostname or url
    message = (f"{spec.name} download from {host} failed ({_reason(error)}); check the network (or a proxy), or "
               f"download it by hand and put the files at {expected.parent} (layout: {spec.layout})")
    return DataNotFoundError(_one_line(message))


def _reason(error: BaseException) -> str:
    """Why a download failed, in a few words: urllib wraps the socket's error in ``URLError.reason``."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        error_or_text = error.reason
        if isinstance(error_or_text, OSError) and error_or_text.strerror:
            return error_or_text.strerror
        return first_line(str(error_or_text)) or "URLError"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return first_line(error, typed=True)


def require_files(
    spec: DatasetSpec,
    paths: Sequence[Path],
    *,
    dirs: Sequence[Path] = (),
    download: bool,
    fetch: Callable[[], None] | None = None,
    url: str = "",
) -> None:
    """Raise ``DataNotFoundError`` for the first missing path, after one download attempt when asked and possible;
    then ``BadDataError`` for a path of the wrong kind (``paths`` must be files, ``dirs`` directories), which would
    otherwise fail later inside a reader with ``IsADirectoryError`` or ``NotADirectoryError``.

    ``fetch`` is the dataset's torchvision downloader from ``url``; it runs only when something is missing,
    ``download`` is set and the spec says the set is downloadable. A failed download is one line naming the host.
    """
    everything = [*paths, *dirs]
    missing = [path for path in everything if not path.exists()]
    if missing and download and spec.downloadable and fetch is not None:
        try:
            fetch()
        except (OSError, RuntimeError) as error:  # URLError, HTTPError, timeouts; torchvision's "corrupted" check
            raise download_failed(spec, url, error, missing[0]) from None
        missing = [path for path in everything if not path.exists()]
    if missing:
        raise not_found(spec, missing[0], download_requested=download)
    for path in paths:
        if not path.is_file():
            raise bad_data(spec, path, "is a directory, not a file" if path.is_dir() else "is not a regular file",
                           fix=f"put the dataset's file there (layout: {spec.layout})")
    for path in dirs:
        if not path.is_dir():
            raise bad_data(spec, path, "is a file, not a directory",
                           fix=f"put the dataset's folder there (layout: {spec.layout})")
