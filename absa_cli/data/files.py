"""Where a dataset's files should be, the one-line error when they are not, and the optional download.

Every on-disk loader checks its files through ``require_files`` before reading anything, so a wrong ``data.root``
fails at once with the expected path and layout, never with a traceback from deep inside a reader.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from absa_cli.catalog import DatasetSpec
from absa_cli.errors import DataNotFoundError


def dataset_dir(spec: DatasetSpec, root: str | os.PathLike) -> Path:
    """``root / spec.folder``: the directory holding this dataset's files."""
    return Path(root).expanduser() / spec.folder


def not_found(spec: DatasetSpec, expected: Path, *, download_requested: bool = False) -> DataNotFoundError:
    """The error for a missing file or directory: one line naming the path, the layout and the fix."""
    if spec.downloadable:
        fix = "run with data.download=true to fetch it, or set data.root=DIR (or ABSA_DATA) to where it is"
    elif download_requested:
        fix = ("it cannot be downloaded automatically: put the files there, "
               "or set data.root=DIR (or ABSA_DATA) to where they are")
    else:
        fix = "put the files there, or set data.root=DIR (or ABSA_DATA) to where they are"
    message = f"{spec.name} data not found: expected {expected} (layout: {spec.layout}); {fix}"
    return DataNotFoundError(" ".join(message.splitlines()))


def require_files(
    spec: DatasetSpec,
    paths: Sequence[Path],
    *,
    download: bool,
    fetch: Callable[[], None] | None = None,
) -> None:
    """Raise ``DataNotFoundError`` for the first missing path, after one download attempt when asked and possible.

    ``fetch`` is the dataset's torchvision downloader; it runs only when something is missing, ``download`` is set
    and the spec says the set is downloadable.
    """
    missing = [path for path in paths if not path.exists()]
    if not missing:
        return
    if download and spec.downloadable and fetch is not None:
        fetch()
        missing = [path for path in paths if not path.exists()]
        if not missing:
            return
    raise not_found(spec, missing[0], download_requested=download)
