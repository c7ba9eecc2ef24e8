"""CIFAR-10 and CIFAR-100 from the official "python version" pickles, read by our own code.

torchvision's dataset classes verify md5 checksums of the whole archive, which rules out small fixture files in
tests; the pickle format itself is trivial (``data``: N×3072 uint8 in CHW row-major order, plus a label list).
Since no checksum guards the files, each batch is checked as it is read (a dict with both keys, N×3072 pixels,
one label per row within the classes, at least one row), and anything else is refused in one line naming the file.
A pickle may name any callable, which unpickling calls (a file from anywhere could run code, as a checkpoint could
without ``weights_only``): a batch may name only numpy's array reconstruction, and nothing else is called.
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
from absa_cli.data.checks import as_array, integer_labels, uint8_pixels
from absa_cli.data.files import bad_data, dataset_dir, require_files, unreadable
from absa_cli.errors import first_line

_CIFAR_AUGMENT = CropFlip(padding=4, flip=True)
_ROW = 3 * 32 * 32  # one image: 1024 red, then 1024 green, then 1024 blue values


def _batch_files(spec: DatasetSpec, split: str) -> list[str]:
    if spec.name == "cifar10":
        return [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    return ["train"] if split == "train" else ["test"]


# Every global a CIFAR batch's pickle names (numpy 1 and numpy 2 spell the module differently; protocol 5 rebuilds
# arrays from a buffer; Python 3 writes bytes in protocol 2 through _codecs.encode, as torch's weights_only reader
# also allows): a dict of lists, strings and uint8 arrays needs no other.
_ARRAY_GLOBALS = {(module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
                  for name in ("_reconstruct", "scalar")} | {("numpy", "ndarray"), ("numpy", "dtype")} | \
                 {(module, "_frombuffer") for module in ("numpy.core.numeric", "numpy._core.numeric")} | \
                 {("_codecs", "encode")}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ARRAY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR batch never does; not called")


def _unpickle(spec: DatasetSpec, path: Path) -> dict:
    """The batch's dict, with keys as ``str`` (a pickle written under Python 2 with ``encoding="bytes"`` habits
    has ``bytes`` keys; the content is the same)."""
    try:
        with path.open("rb") as f:
            entry = _BatchUnpickler(f, encoding="latin1").load()
    except Exception as error:  # a cut or foreign file trips pickle in many ways: UnpicklingError, EOFError, ...
        if isinstance(error, OSError) and error.errno is not None:  # the system's refusal (permissions, I/O)
            raise unreadable(spec, path, error) from None
        raise bad_data(spec, path, f"is not a readable pickle ({first_line(error, typed=True)})") from None
    if not isinstance(entry, dict):
        raise bad_data(spec, path, f"holds a pickled {type(entry).__name__}, not the dict of a CIFAR batch")
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in entry.items()}


def _read_batch(spec: DatasetSpec, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``N×3072`` pixels and int64 labels of one batch file, checked."""
    entry = _unpickle(spec, path)
    label_key, other_key = ("labels", "fine_labels") if spec.name == "cifar10" else ("fine_labels", "labels")
    for key in ("data", label_key):
        if key not in entry:
            other = "CIFAR-100" if spec.name == "cifar10" else "CIFAR-10"
            looks_like = f" (it has {other_key!r}: a {other} file?)" if key == label_key and other_key in entry else ""
            raise bad_data(spec, path, f"has no {key!r} entry{looks_like}")
    pixels = as_array(spec, path, entry["data"], "'data'")
    if pixels.ndim != 2 or pixels.shape[1] != _ROW:
        raise bad_data(spec, path, f"holds 'data' of shape {pixels.shape}; a CIFAR batch holds one row of "
                                   f"{_ROW} values (3×32×32) per image")
    if len(pixels) == 0:
        raise bad_data(spec, path, "holds no images")
    pixels = uint8_pixels(spec, path, pixels, "'data'")
    labels = integer_labels(spec, path, as_array(spec, path, entry[label_key], repr(label_key)),
                            count=len(pixels), what=f"labels ({label_key!r})", low=0, high=spec.num_classes - 1,
                            meaning=f"the {spec.num_classes} classes 0..{spec.num_classes - 1}")
    return pixels, labels


def load_cifar(
    spec: DatasetSpec, split: str, root: str | os.PathLike, *, size: int, download: bool
) -> TensorImageDataset:
    """The whole split as one uint8 tensor; ``size`` > 0 keeps the first ``size`` samples."""
    import torchvision.datasets as tvd

    directory = dataset_dir(spec, root)
    paths = [directory / name for name in _batch_files(spec, split)]
    downloader = tvd.CIFAR10 if spec.name == "cifar10" else tvd.CIFAR100

    def fetch() -> None:
        downloader(str(directory.parent), train=split == "train", download=True)

    require_files(spec, paths, download=download, fetch=fetch, url=downloader.url)
    pixel_parts, label_parts = zip(*(_read_batch(spec, path) for path in paths))
    images = torch.from_numpy(np.concatenate(pixel_parts).reshape(-1, 3, 32, 32))
    labels = torch.from_numpy(np.concatenate(label_parts))
    if size > 0:
        images, labels = images[:size].clone(), labels[:size].clone()  # clone: let the rest of the split be freed
    return TensorImageDataset(spec, split, images, labels, _CIFAR_AUGMENT)
