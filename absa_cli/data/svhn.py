"""SVHN cropped digits (format 2) from the official ``.mat`` files, read with scipy.

Each file holds ``X`` as 32×32×3×N uint8 (height, width, channel, sample) and ``y`` as N×1 with the digit 0
stored as label 10 (a 0 is read as the digit 0 too, for files relabelled 0..9). Both are checked as read, since
an N×32×32×3 or 24×24 ``X`` would otherwise be transposed into nonsense and a ``y`` of 11 crash the loss mid-run.
Crop augmentation only: a flipped digit is a different glyph (or none).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from absa_cli.catalog import DatasetSpec
from absa_cli.data.augment import CropFlip
from absa_cli.data.base import TensorImageDataset
from absa_cli.data.checks import as_array, integer_labels, uint8_pixels
from absa_cli.data.files import bad_data, dataset_dir, require_files, unreadable
from absa_cli.errors import first_line

SVHN_SPLITS = ("train", "test", "extra", "train+extra")
_SVHN_AUGMENT = CropFlip(padding=4, flip=False)
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _is_hdf5(path: Path) -> bool:
    """A MATLAB v7.3 file is HDF5: the signature sits at byte 0 or after a 512-byte user block."""
    try:
        with path.open("rb") as f:
            head = f.read(520)
    except OSError:
        return False
    return head.startswith(_HDF5_SIGNATURE) or head[512:520] == _HDF5_SIGNATURE


def _read_mat(spec: DatasetSpec, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``N×3×32×32`` pixels and int64 labels 0..9 of one ``.mat`` file, checked."""
    import scipy.io  # here, not at import: only SVHN needs it, and every run imports the dataset package

    try:
        content = scipy.io.loadmat(str(path), variable_names=("X", "y"))
    except Exception as error:  # cut or foreign files: MatReadError, OSError("could not read bytes"), ValueError...
        if isinstance(error, OSError) and error.errno is not None:  # the system's refusal (permissions, I/O)
            raise unreadable(spec, path, error) from None
        if _is_hdf5(path):
            problem = ("is a MATLAB v7.3 (HDF5) file, which scipy cannot read; the official format-2 files are "
                       "MATLAB v5 (re-save it with save(..., '-v7'))")
        else:
            problem = f"is not a readable MATLAB .mat file ({first_line(error, typed=True)})"
        raise bad_data(spec, path, problem) from None
    for key in ("X", "y"):
        if key not in content:
            raise bad_data(spec, path, f"has no {key!r} variable (format 2 holds X: 32×32×3×N pixels, y: N labels)")
    side = spec.image_size
    pixels = as_array(spec, path, content["X"], "X")
    if pixels.ndim != 4 or pixels.shape[:3] != (side, side, 3):
        hint = " (N×H×W×C: the samples must be the last axis)" if pixels.shape[1:] == (side, side, 3) else ""
        raise bad_data(spec, path, f"holds X of shape {pixels.shape}{hint}; SVHN format 2 stores "
                                   f"{side}×{side}×3×N (height, width, channel, sample)")
    if pixels.shape[3] == 0:
        raise bad_data(spec, path, "holds no images (X has 0 samples)")
    pixels = uint8_pixels(spec, path, pixels, "X")
    digits = integer_labels(spec, path, as_array(spec, path, content["y"], "y"), count=pixels.shape[3],
                            what="labels in y", low=0, high=10, meaning="1..10 (10 stands for the digit 0)")
    return np.ascontiguousarray(np.transpose(pixels, (3, 2, 0, 1))), np.where(digits == 10, 0, digits)


def load_svhn(
    spec: DatasetSpec, split: str, root: str | os.PathLike, *, size: int, download: bool
) -> TensorImageDataset:
    """One split (or ``train+extra``, concatenated in that order) as a uint8 tensor."""
    import torchvision.datasets as tvd

    directory = dataset_dir(spec, root)
    parts = split.split("+")
    paths = [directory / f"{part}_32x32.mat" for part in parts]

    def fetch() -> None:
        for part, path in zip(parts, paths):
            if not path.exists():
                tvd.SVHN(str(directory), split=part, download=True)

    require_files(spec, paths, download=download, fetch=fetch, url=tvd.SVHN.split_list[parts[0]][0])
    pixel_parts, label_parts = zip(*(_read_mat(spec, path) for path in paths))
    images = torch.from_numpy(np.concatenate(pixel_parts))
    labels = torch.from_numpy(np.concatenate(label_parts))
    if size > 0:
        images, labels = images[:size].clone(), labels[:size].clone()
    return TensorImageDataset(spec, split, images, labels, _SVHN_AUGMENT)
