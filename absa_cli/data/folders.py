"""JPEG-folder datasets: TinyImageNet (official unpacked zip) and ImageNet (torchvision ImageFolder layout).

Too large to hold decoded, so only the file list and labels are kept and each batch is decoded on demand with PIL.
Class indices follow sorted wnid order, the convention torchvision's ImageFolder and most published code use, so
checkpoints stay comparable.

What opening checks, from the listings alone (no image is decoded: that would take minutes on ImageNet): the class
list has no repeated wnid and no more classes than the spec (a label past the model's last output would crash the
loss mid-run; a repeated wnid shifts every later label), every annotated file is there, and the split is not empty.
A corrupt image is found only when a batch decodes it; the error then names the file (``UnreadableImageError``).
"""

from __future__ import annotations

import os
from abc import abstractmethod
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from absa_cli.catalog import DatasetSpec
from absa_cli.data.augment import CropFlip, random_resized_crop_box, sample_generator
from absa_cli.data.base import ImageDataset, check_batch_args, normalize
from absa_cli.data.files import bad_data, dataset_dir, no_images, not_found, require_files, unreadable
from absa_cli.errors import BadDataError, first_line


class UnreadableImageError(BadDataError):
    """An image file PIL cannot decode (cut short, not an image), met mid-run: its message names the file, and the
    run ends on it in one line (failed, resumable once the file is replaced), as for bad input found up front."""


def _listing(spec: DatasetSpec, directory: Path) -> list[os.DirEntry]:
    """The entries of ``directory``; one that cannot be listed (permissions) is a one-line error, not a traceback."""
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except OSError as error:
        raise unreadable(spec, directory, error, doing="listed") from None


def _image_files(spec: DatasetSpec, directory: Path) -> list[Path]:
    """Image files directly inside ``directory``, sorted by name so the index order is reproducible. Hidden files
    are not images: macOS leaves a ``._<name>.JPEG`` of metadata beside every file it copies to another disk."""
    from torchvision.datasets.folder import IMG_EXTENSIONS  # here: torchvision costs every worker a second to import

    images = [e for e in _listing(spec, directory)
              if not e.name.startswith(".") and e.name.lower().endswith(IMG_EXTENSIONS)]
    _no_broken_link(spec, images)
    return [directory / name for name in sorted(e.name for e in images if e.is_file())]


def _subdirs(spec: DatasetSpec, directory: Path) -> list[str]:
    """Folders inside ``directory``, sorted; hidden ones (``.Trash-1000``, ``.ipynb_checkpoints``) are no class:
    counted as one, they shifted every label after them."""
    entries = [e for e in _listing(spec, directory) if not e.name.startswith(".")]
    _no_broken_link(spec, entries)
    return sorted(e.name for e in entries if e.is_dir())


def _no_broken_link(spec: DatasetSpec, entries: list[os.DirEntry]) -> None:
    """A symbolic link to nothing (a disk not mounted, a moved copy) is neither a folder nor a file: skipped, a
    class folder would shift every label after it, and an image would shrink the split."""
    for entry in entries:
        if entry.is_symlink() and not os.path.exists(entry.path):
            raise bad_data(spec, Path(entry.path), f"is a symbolic link to {os.readlink(entry.path)}, which does "
                           f"not exist", fix="mount or restore what it points to, or remove the link")


def _no_empty_class(spec: DatasetSpec, empty: list[Path]) -> None:
    """A training class folder without images (an extraction cut short) would leave its class untrained, silently."""
    if empty:
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise bad_data(spec, empty[0], f"holds no image files{more}: that class would never be trained",
                       fix="restore its images, or remove the class")


def _decode_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # a few TinyImageNet/ImageNet JPEGs are greyscale or CMYK
    except Exception as error:  # PIL's errors for a cut JPEG ("image file is truncated") do not name the file
        if isinstance(error, OSError) and error.errno is not None:  # the system's refusal (permissions, I/O, gone)
            fix = "restore it" if isinstance(error, FileNotFoundError) else "make it readable"
            raise UnreadableImageError(f"cannot read the image {path} ({error.strerror or first_line(error)}); "
                                       f"{fix}, or set data.root=DIR (or ABSA_DATA) to a readable copy") from error
        raise UnreadableImageError(f"cannot decode the image {path} ({first_line(error, typed=True)}); replace "
                                   f"it with a good copy") from error


def _to_uint8_chw(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


class FileImageDataset(ImageDataset):
    """A list of image files with labels; subclasses say how one file becomes a uint8 ``3×S×S`` tensor."""

    def __init__(self, spec: DatasetSpec, split: str, paths: list[Path], labels: list[int], size: int,
                 subset: str = "spread") -> None:
        if 0 < size < len(paths):  # spread: the files are listed class by class, so the first N of ImageNet's
            keep = [i * len(paths) // size for i in range(size)] if subset == "spread" else range(size)  # are a
            paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]  # class or two (data.subset)
        self.spec = spec
        self.split = split
        self.paths = paths
        self.labels = torch.tensor(labels, dtype=torch.int64)

    def identity(self) -> dict[str, int | str | None]:
        """Each index's file name and label, digested (not the folder: data.root may move to another copy): under
        data.train_size a file added or removed changes which files the subset keeps, not how many."""
        import hashlib

        digest = hashlib.sha256()
        for path, label in zip(self.paths, self.labels.tolist()):
            digest.update(f"{label} {path.name}\n".encode())
        return {"samples": len(self), "files": digest.hexdigest()[:16]}

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
        from torchvision.transforms import functional as TF  # noqa: N812 - imported once, then a dictionary lookup

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


def _read_lines(spec: DatasetSpec, path: Path) -> list[str]:
    """The non-blank lines of a small text file, stripped (so Windows line ends read the same)."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # Windows editors start a UTF-8 file with a byte-order mark
    except UnicodeDecodeError:
        raise bad_data(spec, path, "is not a text file") from None
    except OSError as error:
        raise unreadable(spec, path, error) from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _read_wnids(spec: DatasetSpec, path: Path) -> list[str]:
    """The sorted class list, refused when it could mislabel: a repeated wnid shifts the index of every later one,
    and more wnids than classes gives labels past the model's last output."""
    listed = _read_lines(spec, path)
    if not listed:
        raise bad_data(spec, path, "lists no wnid")
    for line in listed:
        if len(line.split()) != 1:
            raise bad_data(spec, path, f"has {line[:60]!r} on a line; it lists one wnid (e.g. n01443537) per line")
    wnids = sorted(listed)
    repeated = next((a for a, b in zip(wnids, wnids[1:]) if a == b), None)
    if repeated is not None:
        raise bad_data(spec, path, f"lists {repeated} more than once, which would shift the label of every later "
                                   f"wnid", fix="keep each wnid once (the official file lists 200 different ones)")
    if len(wnids) > spec.num_classes:
        raise bad_data(spec, path, f"lists {len(wnids)} wnids, more than the {spec.num_classes} classes of "
                                   f"{spec.name}", fix=f"keep at most {spec.num_classes} (the official file lists 200)")
    return wnids


def _read_val_annotations(spec: DatasetSpec, path: Path) -> list[tuple[str, str]]:
    """``(file name, wnid)`` per line of ``val_annotations.txt`` (tab-separated: file, wnid, bounding box)."""
    rows = []
    for line in _read_lines(spec, path):
        fields = line.split("\t")
        if len(fields) < 2 or not fields[0] or not fields[1]:
            raise bad_data(spec, path, f"has the line {line[:60]!r}; each line is FILE<TAB>WNID<TAB>x0<TAB>y0<TAB>"
                                       f"x1<TAB>y1 (tab-separated, as in the official zip)")
        rows.append((fields[0], fields[1]))
    return sorted(rows)


def load_tinyimagenet(
    spec: DatasetSpec, split: str, root: str | os.PathLike, *, size: int, download: bool, subset: str = "spread"
) -> TinyImageNetDataset:
    """``train`` from ``train/<wnid>/images``; ``test`` is the labelled ``val`` split (official test: unlabelled)."""
    directory = dataset_dir(spec, root)
    wnids_file = directory / "wnids.txt"
    annotations, val_images = directory / "val" / "val_annotations.txt", directory / "val" / "images"
    if split == "train":
        require_files(spec, [wnids_file], dirs=[directory / "train"], download=download)
    else:
        require_files(spec, [wnids_file, annotations], dirs=[val_images], download=download)
    wnids = _read_wnids(spec, wnids_file)
    class_index = {wnid: i for i, wnid in enumerate(wnids)}
    paths: list[Path] = []
    labels: list[int] = []
    empty: list[Path] = []
    if split == "train":
        for wnid in wnids:
            images_dir = directory / "train" / wnid / "images"
            if not images_dir.is_dir():
                raise not_found(spec, images_dir, download_requested=download)
            files = _image_files(spec, images_dir)
            empty += [] if files else [images_dir]
            paths.extend(files)
            labels.extend([class_index[wnid]] * len(files))
        if not paths:
            raise no_images(spec, f"in {directory / 'train'}/<wnid>/images for the {len(wnids)} wnids of {wnids_file}",
                            download_requested=download)
        _no_empty_class(spec, empty)
    else:
        listed = _listing(spec, val_images)
        _no_broken_link(spec, [entry for entry in listed if not entry.name.startswith(".")])
        present = {entry.name for entry in listed}
        for filename, wnid in _read_val_annotations(spec, annotations):
            if wnid not in class_index:
                raise bad_data(spec, annotations, f"labels {filename} with {wnid!r}, which is not in {wnids_file}",
                               fix="use the wnids.txt and val/ of the same official zip")
            if filename not in present:
                raise bad_data(spec, annotations, f"lists {filename}, which is not in {val_images}",
                               fix="unpack the official zip's val/images again, or remove the line")
            paths.append(val_images / filename)
            labels.append(class_index[wnid])
        if not paths:
            raise no_images(spec, f"for the test split: {annotations} lists none", download_requested=download)
    return TinyImageNetDataset(spec, split, paths, labels, size, subset)


def load_imagenet(
    spec: DatasetSpec, split: str, root: str | os.PathLike, *, size: int, download: bool, subset: str = "spread"
) -> ImageNetDataset:
    """``train/<wnid>/*`` or (for ``test``) ``val/<wnid>/*``; classes: the sorted wnids of ``train/`` if present."""
    directory = dataset_dir(spec, root)
    split_dir = directory / ("train" if split == "train" else "val")
    train_dir = directory / "train"
    require_files(spec, [], dirs=[split_dir], download=download)
    if train_dir.exists():  # a file there must not leave val/ alone to define the classes
        require_files(spec, [], dirs=[train_dir], download=download)
    class_source = train_dir if train_dir.is_dir() else split_dir
    wnids = _subdirs(spec, class_source)
    if len(wnids) > spec.num_classes:
        raise bad_data(spec, class_source, f"has {len(wnids)} class folders, more than the {spec.num_classes} classes "
                                           f"of {spec.name}: the labels past {spec.num_classes - 1} fit no output",
                       fix=f"keep only the {spec.num_classes} ILSVRC-2012 class folders (one per wnid) there")
    class_index = {wnid: i for i, wnid in enumerate(wnids)}
    paths: list[Path] = []
    labels: list[int] = []
    empty: list[Path] = []
    for wnid in _subdirs(spec, split_dir):
        if wnid not in class_index:
            raise bad_data(spec, split_dir / wnid, f"has no matching class folder in {class_source}",
                           fix="give train/ and val/ the same <wnid> folders (val/ sorted into class folders)")
        files = _image_files(spec, split_dir / wnid)
        empty += [] if files else [split_dir / wnid]
        paths.extend(files)
        labels.extend([class_index[wnid]] * len(files))
    if not paths:
        raise no_images(spec, f"in {split_dir}/<wnid>/ (image files sorted into one folder per class)",
                        download_requested=download)
    if split == "train":
        _no_empty_class(spec, empty)
    return ImageNetDataset(spec, split, paths, labels, size, subset)
