"""CIFAR-10 and CIFAR-100 from the official "python version" pickles, read by our own code.

torchvision's dataset classes verify md5 checksums of the whole archive, which rules out small fixture files in
tests; the pickle format itself is trivial (``data``: N×3072 uint8 in CHW row-major order, plus a label list).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch

from absa_cli.catalog import DatasetSpec
from absa_cli.data.augment import CropFlip
from absa_cli.data.base import TensorImageDataset
from absa_cli.data.files import dataset_dir, require_files

_CIFAR_AUGMENT = CropFlip(padding=4, flip=True)


def _batch_files(spec: DatasetSpec, split: str) -> list[str]:
    if spec.name == "cifar10":
        return [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    return ["train"] if split == "train" else ["test"]


def _read_pickle(path: Path, label_key: str) -> tuple[np.ndarray, list[int]]:
    with path.open("rb") as f:
        entry = pickle.load(f, encoding="latin1")
    return np.asarray(entry["data"], dtype=np.uint8), list(entry[label_key])


def load_cifar(
    spec: DatasetSpec, split: str, root: str | os.PathLike, *, size: int, download: bool
) -> TensorImageDataset:
    """The whole split as one uint8 tensor; ``size`` > 0 keeps the first ``size`` samples."""
    directory = dataset_dir(spec, root)
    paths = [directory / name for name in _batch_files(spec, split)]

    def fetch() -> None:
        import torchvision.datasets as tvd

        downloader = tvd.CIFAR10 if spec.name == "cifar10" else tvd.CIFAR100
        downloader(str(directory.parent), train=split == "train", download=True)

    require_files(spec, paths, download=download, fetch=fetch)
    label_key = "labels" if spec.name == "cifar10" else "fine_labels"
    pixel_parts, label_parts = [], []
    for path in paths:
        pixels, labels = _read_pickle(path, label_key)
        pixel_parts.append(pixels)
        label_parts.extend(labels)
    pixels = np.concatenate(pixel_parts).reshape(-1, 3, 32, 32)
    images = torch.from_numpy(pixels)
    labels = torch.tensor(label_parts, dtype=torch.int64)
    if size > 0:
        images, labels = images[:size].clone(), labels[:size]  # clone: let the rest of the split be freed
    return TensorImageDataset(spec, split, images, labels, _CIFAR_AUGMENT)
