"""Datasets by catalogue name: ``build_dataset(name, split, root)`` → an ``ImageDataset``.

Layer 1: torch, torchvision, PIL, scipy, numpy, and ``absa_cli.catalog`` / ``absa_cli.errors`` only (never ray).
Each loader reads its real on-disk format with our own code, so small fixture files work in tests; the names
registered here must match ``catalog.DATASETS`` (a test checks both sides agree).
"""

from __future__ import annotations

import os

from absa_cli.catalog import dataset_spec
from absa_cli.data.base import ImageDataset, TensorImageDataset
from absa_cli.data.cifar import load_cifar
from absa_cli.data.folders import load_imagenet, load_tinyimagenet
from absa_cli.data.procedural import load_synthetic
from absa_cli.data.shapes import load_shapes
from absa_cli.data.svhn import SVHN_SPLITS, load_svhn
from absa_cli.errors import UserError

__all__ = ["DATASET_NAMES", "ImageDataset", "TensorImageDataset", "build_dataset", "splits_of"]

_ON_DISK = {
    "cifar10": load_cifar,
    "cifar100": load_cifar,
    "svhn": load_svhn,
    "tinyimagenet": load_tinyimagenet,
    "imagenet": load_imagenet,
}
_GENERATED = {"shapes": load_shapes, "synthetic": load_synthetic}

DATASET_NAMES: tuple[str, ...] = (*_ON_DISK, *_GENERATED)


def splits_of(name: str) -> tuple[str, ...]:
    """The split names ``build_dataset`` accepts for ``name``."""
    return SVHN_SPLITS if name == "svhn" else ("train", "test")


def build_dataset(
    name: str,
    split: str,
    root: str | os.PathLike,
    *,
    seed: int = 0,
    size: int = 0,
    download: bool = False,
    subset: str = "spread",
) -> ImageDataset:
    """Open (or generate) one split of a catalogued dataset.

    ``root`` holds each on-disk set in ``root / spec.folder``. ``seed`` and ``size`` define generated sets
    (``size`` 0: the spec's default); for on-disk sets ``size`` > 0 keeps ``size`` samples: the first ones of CIFAR
    and SVHN (their files mix the classes); of the image folders, listed class by class, ``subset`` says which
    (``spread``: every k-th, ``first``: the first ones; ``config.DataConfig.subset``). Missing files
    (or an empty split, or a failed download) raise ``DataNotFoundError`` (one line: expected path, layout, fix);
    malformed ones raise ``BadDataError`` (one line: the file, what is wrong, the fix), so both are found here, when
    the dataset is opened, not mid-run. ``download`` fetches downloadable sets first.
    """
    try:
        spec = dataset_spec(name)
    except KeyError as error:
        raise UserError(error.args[0]) from None
    if split not in splits_of(name):
        raise UserError(f"dataset {name!r} has splits {', '.join(splits_of(name))}; got {split!r}")
    if size < 0:
        raise UserError(f"dataset size must be >= 0 (0 = the whole split), got {size}")
    if subset not in ("spread", "first"):  # config.SUBSETS
        raise UserError(f"data.subset={subset!r}; choose spread or first")
    if name in _GENERATED:
        return _GENERATED[name](spec, split, seed=seed, size=size)
    if spec.streamed:
        return _ON_DISK[name](spec, split, root, size=size, download=download, subset=subset)
    return _ON_DISK[name](spec, split, root, size=size, download=download)


def open_split(data, split: str) -> ImageDataset:
    """``split`` of the dataset a ``config.DataConfig`` names, as the run trains on it."""
    size = data.test_size if split == "test" else data.train_size
    return build_dataset(data.name, split, data.resolved_root(), seed=data.seed, size=size, download=data.download,
                         subset=data.subset)
