"""JPEG-folder datasets: TinyImageNet (official unpacked zip) and ImageNet (torchvision ImageFolder layout).

Too large to hold decoded, so only the file list and labels are kept and each batch is decoded on demand with PIL.
Class indices follow sorted wnid order, the convention torchvision's ImageFolder and most published code use, so
checkpoints stay comparable.
"""

from __future__ import annotations

import os
from abc import abstractmethod
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import functional as TF

from absa_cli.catalog import DatasetSpec
from absa_cli.data.augment import CropFlip, random_resized_crop_box, sample_generator
from absa_cli.data.base import ImageDataset, check_batch_args, normalize
from absa_cli.data.files import dataset_dir, not_found, require_files
from absa_cli.errors import DataNotFoundError


def _image_files(directory: Path) -> list[Path]:
    """Image files directly inside ``directory``, sorted by name so the index order is reproducible."""
    with os.scandir(directory) as entries:
        names = [e.name for e in entries if e.is_file() and e.name.lower().endswith(IMG_EXTENSIONS)]
    return [directory / name for name in sorted(names)]


def _subdirs(directory: Path) -> list[str]:
    with os.scandir(directory) as entries:
        return sorted(e.name for e in entries if e.is_dir())


def _decode_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")  # a few TinyImageNet/ImageNet JPEGs are greyscale or CMYK


def _to_uint8_chw(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


class FileImageDataset(ImageDataset):
    """A list of image files with labels; subclasses say how one file becomes a uint8 ``3×S×S`` tensor."""

    def __init__(self, spec: DatasetSpec, split: str, paths: list[Path], labels: list[int], size: int) -> None:
        if size > 0:
            paths, labels = paths[:size], labels[:size]
        self.spec = spec
        self.split = split
        self.paths = paths
        self.labels = torch.tensor(labels, dtype=torch.int64)

    @abstractmethod
    def _load(self, index: int, aug_seed: int | None) -> torch.Tensor:
        """Sample ``index`` as uint8 ``3×S×S``; ``aug_seed`` drives any per-image augmentation."""

    def _augment_batch(self, images: torch.Tensor, aug_seeds: torch.Tensor) -> torch.Tensor:
        return images

    def get_batch(
        self, indices: torch.Tensor, aug_seeds: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        indices = check_batch_args(indices, aug_seeds)
        seeds = [None] * len(indices) if aug_seeds is None else aug_seeds.tolist()
        images = torch.stack([self._load(i, s) for i, s in zip(indices.tolist(), seeds)])
        if aug_seeds is not None:
            images = self._augment_batch(images, aug_seeds)
        return normalize(images, self.spec), self.labels[indices]


class TinyImageNetDataset(FileImageDataset):
    """64 px images; the batch is decoded, then cropped and flipped together like CIFAR (pad 4, crop 64), as the
    reference code augments TinyImageNet."""

    augment = CropFlip(padding=4, flip=True)

    def _load(self, index: int, aug_seed: int | None) -> torch.Tensor:
        image = _decode_rgb(self.paths[index])
        side = self.spec.image_size
        if image.size != (side, side):
            image = image.resize((side, side), Image.BILINEAR)
        return _to_uint8_chw(image)

    def _augment_batch(self, images: torch.Tensor, aug_seeds: torch.Tensor) -> torch.Tensor:
        return self.augment(images, aug_seeds)


class ImageNetDataset(FileImageDataset):
    """Random-resized crop + flip per image for training; resize to 8/7 of the side and centre-crop otherwise."""

    def _load(self, index: int, aug_seed: int | None) -> torch.Tensor:
        image = _decode_rgb(self.paths[index])
        side = self.spec.image_size
        if aug_seed is None:
            image = TF.center_crop(TF.resize(image, side * 8 // 7), [side, side])
        else:
            generator = sample_generator(aug_seed)
            top, left, height, width = random_resized_crop_box(image.height, image.width, generator)
            image = TF.resized_crop(image, top, left, height, width, [side, side])
            if torch.rand(1, generator=generator).item() < 0.5:
                image = TF.hflip(image)
        return _to_uint8_chw(image)


def load_tinyimagenet(
    spec: DatasetSpec, split: str, root: str | os.PathLike, *, size: int, download: bool
) -> TinyImageNetDataset:
    """``train`` from ``train/<wnid>/images``; ``test`` is the labelled ``val`` split (official test: unlabelled)."""
    directory = dataset_dir(spec, root)
    wnids_file = directory / "wnids.txt"
    if split == "train":
        require_files(spec, [wnids_file, directory / "train"], download=download)
    else:
        annotations = directory / "val" / "val_annotations.txt"
        require_files(spec, [wnids_file, annotations, directory / "val" / "images"], download=download)
    wnids = sorted(line.strip() for line in wnids_file.read_text().splitlines() if line.strip())
    class_index = {wnid: i for i, wnid in enumerate(wnids)}
    paths: list[Path] = []
    labels: list[int] = []
    if split == "train":
        for wnid in wnids:
            images_dir = directory / "train" / wnid / "images"
            if not images_dir.is_dir():
                raise not_found(spec, images_dir, download_requested=download)
            files = _image_files(images_dir)
            paths.extend(files)
            labels.extend([class_index[wnid]] * len(files))
    else:
        rows = [line.split("\t") for line in annotations.read_text().splitlines() if line.strip()]
        for filename, wnid, *_ in sorted(rows):
            if wnid not in class_index:
                raise DataNotFoundError(f"{annotations}: wnid {wnid!r} for {filename} is not in {wnids_file}")
            paths.append(directory / "val" / "images" / filename)
            labels.append(class_index[wnid])
    return TinyImageNetDataset(spec, split, paths, labels, size)


def load_imagenet(
    spec: DatasetSpec, split: str, root: str | os.PathLike, *, size: int, download: bool
) -> ImageNetDataset:
    """``train/<wnid>/*`` or (for ``test``) ``val/<wnid>/*``; classes: the sorted wnids of ``train/`` if present."""
    directory = dataset_dir(spec, root)
    split_dir = directory / ("train" if split == "train" else "val")
    require_files(spec, [split_dir], download=download)
    class_source = directory / "train" if (directory / "train").is_dir() else split_dir
    wnids = _subdirs(class_source)
    class_index = {wnid: i for i, wnid in enumerate(wnids)}
    paths: list[Path] = []
    labels: list[int] = []
    for wnid in _subdirs(split_dir):
        if wnid not in class_index:
            raise DataNotFoundError(f"{split_dir / wnid} has no matching class directory in {class_source}")
        files = _image_files(split_dir / wnid)
        paths.extend(files)
        labels.extend([class_index[wnid]] * len(files))
    if not paths:
        raise not_found(spec, split_dir / "<wnid>" / "*.JPEG", download_requested=download)
    return ImageNetDataset(spec, split, paths, labels, size)
