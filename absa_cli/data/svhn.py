"""SVHN cropped digits (format 2) from the official ``.mat`` files, read with scipy.

Each file holds ``X`` as 32×32×3×N uint8 (height, width, channel, sample) and ``y`` as N×1 with the digit 0
stored as label 10. Crop augmentation only: a flipped digit is a different glyph (or none).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from absa_cli.catalog import DatasetSpec
from absa_cli.data.augment import CropFlip
from absa_cli.data.base import TensorImageDataset
from absa_cli.data.files import dataset_dir, require_files

SVHN_SPLITS = ("train", "test", "extra", "train+extra")
_SVHN_AUGMENT = CropFlip(padding=4, flip=False)


def load_svhn(
    spec: DatasetSpec, split: str, root: str | os.PathLike, *, size: int, download: bool
) -> TensorImageDataset:
    """One split (or ``train+extra``, concatenated in that order) as a uint8 tensor."""
    directory = dataset_dir(spec, root)
    parts = split.split("+")
    paths = [directory / f"{part}_32x32.mat" for part in parts]

    def fetch() -> None:
        import torchvision.datasets as tvd

        for part, path in zip(parts, paths):
            if not path.exists():
                tvd.SVHN(str(directory), split=part, download=True)

    require_files(spec, paths, download=download, fetch=fetch)
    import scipy.io  # here, not at import: only SVHN needs it, and every run imports the dataset package

    pixel_parts, label_parts = [], []
    for path in paths:
        content = scipy.io.loadmat(str(path))
        pixel_parts.append(np.ascontiguousarray(np.transpose(content["X"], (3, 2, 0, 1)), dtype=np.uint8))
        digits = np.asarray(content["y"], dtype=np.int64).reshape(-1)
        label_parts.append(np.where(digits == 10, 0, digits))
    images = torch.from_numpy(np.concatenate(pixel_parts))
    labels = torch.from_numpy(np.concatenate(label_parts))
    if size > 0:
        images, labels = images[:size].clone(), labels[:size].clone()
    return TensorImageDataset(spec, split, images, labels, _SVHN_AUGMENT)
