"""Cheap checks of the arrays a dataset file holds, made as the file is read.

Without them a malformed file is accepted and fails far from its cause: pixels of the wrong shape are reshaped
silently and trained on scrambled, a label past the last class crashes the loss mid-epoch (after the run directory
exists), a negative one indexes from the end. Each check is a shape/dtype test or one min/max reduction over an
array already in memory, so opening the full CIFAR or SVHN costs nothing noticeable more; the error names the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from absa_cli.catalog import DatasetSpec
from absa_cli.data.files import bad_data


def as_array(spec: DatasetSpec, path: Path, value: Any, what: str) -> np.ndarray:
    """``value`` as a numpy array; a ragged or non-numeric one (which numpy refuses or stores as objects) is a
    ``BadDataError`` naming ``what``."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        array = None
    if array is None or array.dtype.kind not in "biuf":
        raise bad_data(spec, path, f"holds {what} that is not an array of numbers")
    return array


def uint8_pixels(spec: DatasetSpec, path: Path, pixels: np.ndarray, what: str) -> np.ndarray:
    """``pixels`` as uint8: integers within 0..255 are converted (exactly), anything else is refused rather than
    truncated or wrapped into other pixel values."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype.kind not in "iu":
        raise bad_data(spec, path, f"holds {what} of type {pixels.dtype}, not 8-bit pixels (uint8)")
    if pixels.size and (pixels.min() < 0 or pixels.max() > 255):
        raise bad_data(spec, path, f"holds {what} with values {pixels.min()}..{pixels.max()}, outside the 0..255 "
                                   f"of 8-bit pixels")
    return pixels.astype(np.uint8)


def integer_labels(
    spec: DatasetSpec, path: Path, labels: np.ndarray, *, count: int, what: str, low: int, high: int, meaning: str
) -> np.ndarray:
    """``labels`` (``count`` of them, whole numbers within ``low..high``) as int64; ``meaning`` says what the valid
    range stands for in the error (``"the 10 classes 0..9"``). Whole-valued floats pass: MATLAB writes doubles."""
    labels = labels.reshape(-1)
    if labels.size != count:
        raise bad_data(spec, path, f"holds {count} images but {labels.size} {what}")
    if count == 0:
        return labels.astype(np.int64)
    if labels.dtype.kind == "f" and not np.array_equal(labels, np.floor(labels)):
        raise bad_data(spec, path, f"holds {what} that are not whole numbers")
    if labels.dtype.kind not in "iuf":
        raise bad_data(spec, path, f"holds {what} of type {labels.dtype}, not integers")
    smallest, largest = labels.min(), labels.max()
    if smallest < low or largest > high:
        outside = smallest if smallest < low else largest
        raise bad_data(spec, path, f"holds {what} with the value {outside:g}, outside {meaning}")
    return labels.astype(np.int64)
