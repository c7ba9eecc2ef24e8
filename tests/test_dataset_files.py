"""Malformed dataset files are refused when the dataset is opened, in one line naming the file and the fix.

Each case writes a tiny, otherwise valid copy of a dataset in its real on-disk format (CIFAR pickles, SVHN ``.mat``,
TinyImageNet and ImageNet folder trees), breaks exactly one thing, and checks the ``UserError`` from
``build_dataset``: its type, that it is one line, and that it names the file (or folder) and the problem. Without
the check, each of these would load (and train on wrong data: scrambled pixels, shifted labels) or fail later with
a traceback from inside a reader or the loss. The lenient cases (Python 2 ``bytes`` keys, SVHN labels 0..9) check
that the checks refuse nothing the format allows. End to end, ``absa train`` on such files exits 2 with one
``error:`` line and leaves no run directory; a failed download says which host and that placing files by hand
works; a corrupt JPEG, found only when a batch decodes it, names the file.
"""

from __future__ import annotations

import json
import pickle
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from typer.testing import CliRunner

from absa_cli.cli.app import app
from absa_cli.data import build_dataset
from absa_cli.errors import BadDataError
from absa_cli.data.folders import UnreadableImageError
from absa_cli.errors import DataNotFoundError

from conftest import assert_user_error

# --- tiny copies in the real formats ----------------------------------------------------------------------------

CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def cifar_entry(count: int = 4, classes: int = 10, key: str = "labels", seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
            key: rng.integers(0, classes, count).tolist()}


def write_pickle(path: Path, value) -> None:
    with path.open("wb") as f:
        pickle.dump(value, f)


def write_cifar10(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for seed, name in enumerate(CIFAR10_FILES):
        write_pickle(folder / name, cifar_entry(seed=seed))
    return folder


def write_cifar100(root: Path) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name in ("train", "test"):
        entry = cifar_entry(classes=100, key="fine_labels")
        write_pickle(folder / name, {**entry, "coarse_labels": [label // 5 for label in entry["fine_labels"]]})
    return folder


def write_mat(path: Path, pixels: np.ndarray, digits: np.ndarray) -> None:
    scipy.io.savemat(str(path), {"X": pixels, "y": digits})


def svhn_arrays(count: int = 4) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3, count), dtype=np.uint8)
    return pixels, (np.arange(count).reshape(count, 1) % 10 + 1).astype(np.uint8)  # 1..10, 10 = the digit 0


def write_svhn(root: Path) -> Path:
    folder = root / "svhn"
    folder.mkdir(parents=True)
    for split in ("train", "test"):
        write_mat(folder / f"{split}_32x32.mat", *svhn_arrays())
    return folder


def write_jpeg(path: Path, side: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (side, side), (120, 40, 200)).save(path, format="JPEG")


TINY_WNIDS = ["n0100", "n0200"]


def write_tiny(root: Path) -> Path:
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(TINY_WNIDS) + "\n")
    rows = []
    for i, wnid in enumerate(TINY_WNIDS):
        write_jpeg(base / "train" / wnid / "images" / f"{wnid}_0.JPEG")
        write_jpeg(base / "val" / "images" / f"val_{i}.JPEG")
        rows.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t15\t15")
    (base / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")
    return base


def write_imagenet(root: Path) -> Path:
    base = root / "imagenet"
    for split in ("train", "val"):
        for wnid in ("n01", "n02"):
            write_jpeg(base / split / wnid / f"{wnid}_0.JPEG")
    return base


def replace_with_dir(path: Path) -> None:
    path.unlink()
    path.mkdir()


def replace_with_file(path: Path) -> None:
    for child in sorted(path.rglob("*"), reverse=True):
        child.rmdir() if child.is_dir() else child.unlink()
    path.rmdir()
    path.write_text("")


def cut_in_half(path: Path) -> None:
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])


def assert_one_line(error: BaseException, *fragments: str) -> None:
    message = str(error)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


# --- malformed files: (dataset, split, write a good copy and break one thing → the bad path, error type, words) ---

Setup = Callable[[Path], Path]


def _cifar10(edit: Callable[[Path], Path]) -> Setup:
    return lambda root: edit(write_cifar10(root))


def _svhn(edit: Callable[[Path], Path]) -> Setup:
    return lambda root: edit(write_svhn(root))


def _tiny(edit: Callable[[Path], Path]) -> Setup:
    return lambda root: edit(write_tiny(root))


def _imagenet(edit: Callable[[Path], Path]) -> Setup:
    return lambda root: edit(write_imagenet(root))


def _pickled(name: str, value) -> Callable[[Path], Path]:
    def edit(folder: Path) -> Path:
        write_pickle(folder / name, value)
        return folder / name
    return edit


def _mat(pixels: np.ndarray, digits: np.ndarray) -> Callable[[Path], Path]:
    def edit(folder: Path) -> Path:
        write_mat(folder / "train_32x32.mat", pixels, digits)
        return folder / "train_32x32.mat"
    return edit


def _text(relative: str, text: str) -> Callable[[Path], Path]:
    def edit(base: Path) -> Path:
        (base / relative).write_text(text)
        return base / relative
    return edit


def _then(action: Callable[[Path], object], relative: str) -> Callable[[Path], Path]:
    def edit(base: Path) -> Path:
        action(base / relative)
        return base / relative
    return edit


def _dangling(path: Path) -> None:
    """A symbolic link to nothing in ``path``'s place (a disk not mounted, a moved copy)."""
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    path.symlink_to(path.parent / f"unmounted-{path.name}")


def _v73(folder: Path) -> Path:
    path = folder / "train_32x32.mat"
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(116) + b"\0" * 8 + b"\x00\x02IM"
    path.write_bytes(header.ljust(512, b"\0") + b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    return path


def _cifar100_labels_only(root: Path) -> Path:
    folder = write_cifar100(root)
    write_pickle(folder / "train", cifar_entry(classes=10, key="labels"))
    return folder / "train"


def _cifar100_label_100(root: Path) -> Path:
    folder = write_cifar100(root)
    entry = cifar_entry(classes=100, key="fine_labels")
    entry["fine_labels"][2] = 100
    write_pickle(folder / "train", entry)
    return folder / "train"


def _labels(values: list[int], **entry) -> dict:
    return {**cifar_entry(), "labels": values, **entry}


def _many_imagenet_classes(base: Path) -> Path:
    for i in range(1001):
        (base / "train" / f"n9{i:04d}").mkdir()
    return base / "train"


def _empty_tiny_train(base: Path) -> Path:
    for image in (base / "train").rglob("*.JPEG"):
        image.unlink()
    return base / "train"


def _empty_folder(folder: Path) -> None:
    for image in folder.iterdir():
        image.unlink()


def _flat_imagenet_val(base: Path) -> Path:
    for wnid in ("n01", "n02"):
        replace_with_file(base / "val" / wnid)  # files in val/ itself, not sorted into class folders
    return base / "val"


def _val_extra_class(base: Path) -> Path:
    write_jpeg(base / "val" / "n03" / "n03_0.JPEG")
    return base / "val" / "n03"


BAD = {
    # CIFAR: labels past the classes or negative, pixels of another shape or type, a foreign or cut pickle
    "cifar10-label-10": ("cifar10", "train", _cifar10(_pickled("data_batch_2", _labels([0, 1, 10, 2]))),
                         BadDataError, ["value 10", "the 10 classes 0..9"]),
    "cifar10-label-negative": ("cifar10", "test", _cifar10(_pickled("test_batch", _labels([0, -1, 3, 2]))),
                               BadDataError, ["value -1"]),
    "cifar100-label-100": ("cifar100", "train", _cifar100_label_100, BadDataError, ["value 100", "0..99"]),
    "cifar10-rows-of-3000": ("cifar10", "train", _cifar10(_pickled("data_batch_1", _labels(
        [0, 1, 2, 3], data=np.zeros((4, 3000), np.uint8)))), BadDataError, ["(4, 3000)", "3072"]),
    "cifar10-data-float": ("cifar10", "train", _cifar10(_pickled("data_batch_1", _labels(
        [0, 1, 2, 3], data=np.full((4, 3072), 0.5)))), BadDataError, ["float64", "uint8"]),
    "cifar10-data-over-255": ("cifar10", "train", _cifar10(_pickled("data_batch_1", _labels(
        [0, 1, 2, 3], data=np.full((4, 3072), 300)))), BadDataError, ["300", "0..255"]),
    "cifar10-label-count": ("cifar10", "train", _cifar10(_pickled("data_batch_4", _labels([0, 1, 2]))),
                            BadDataError, ["4 images but 3 labels"]),
    "cifar10-no-rows": ("cifar10", "test", _cifar10(_pickled("test_batch", _labels(
        [], data=np.zeros((0, 3072), np.uint8)))), BadDataError, ["holds no images"]),
    "cifar10-garbage": ("cifar10", "train", _cifar10(_text("data_batch_3", "not a pickle")), BadDataError,
                        ["not a readable pickle"]),
    "cifar10-cut": ("cifar10", "train", _cifar10(_then(cut_in_half, "data_batch_3")), BadDataError,
                    ["not a readable pickle"]),
    "cifar10-a-list": ("cifar10", "train", _cifar10(_pickled("data_batch_3", [1, 2])), BadDataError,
                       ["pickled list, not the dict"]),
    "cifar10-given-cifar100-keys": ("cifar10", "train", _cifar10(_pickled("data_batch_5", cifar_entry(
        key="fine_labels"))), BadDataError, ["no 'labels' entry", "CIFAR-100"]),
    "cifar100-given-cifar10-keys": ("cifar100", "train", _cifar100_labels_only, BadDataError,
                                    ["no 'fine_labels' entry", "CIFAR-10 file"]),
    "cifar10-batch-is-a-dir": ("cifar10", "train", _cifar10(_then(replace_with_dir, "data_batch_2")),
                               BadDataError, ["is a directory, not a file"]),
    # SVHN: y = 11 and 12 are no digit (10 is the digit 0), X of another layout or size, cut or v7.3 files
    "svhn-y-11": ("svhn", "train", _svhn(_mat(svhn_arrays()[0], np.array([[1], [11], [3], [10]], np.uint8))),
                  BadDataError, ["value 11", "1..10"]),
    "svhn-y-not-whole": ("svhn", "train", _svhn(_mat(svhn_arrays()[0], np.array([[1.0], [2.5], [3.0], [4.0]]))),
                         BadDataError, ["not whole numbers"]),
    "svhn-24px": ("svhn", "train", _svhn(_mat(np.zeros((24, 24, 3, 4), np.uint8), svhn_arrays()[1])),
                  BadDataError, ["(24, 24, 3, 4)", "32×32×3×N"]),
    "svhn-NHWC": ("svhn", "train", _svhn(_mat(np.zeros((4, 32, 32, 3), np.uint8), svhn_arrays()[1])),
                  BadDataError, ["(4, 32, 32, 3)", "N×H×W×C"]),
    "svhn-y-shorter": ("svhn", "train", _svhn(_mat(svhn_arrays()[0], svhn_arrays(3)[1])), BadDataError,
                       ["4 images but 3 labels"]),
    "svhn-no-samples": ("svhn", "train", _svhn(_mat(np.zeros((32, 32, 3, 0), np.uint8), np.zeros((0, 1), np.uint8))),
                        BadDataError, ["holds no images"]),
    "svhn-cut": ("svhn", "train", _svhn(_then(cut_in_half, "train_32x32.mat")), BadDataError,
                 ["not a readable MATLAB .mat file"]),
    "svhn-garbage": ("svhn", "train", _svhn(_text("train_32x32.mat", "junk")), BadDataError,
                     ["not a readable MATLAB .mat file"]),
    "svhn-v7.3": ("svhn", "train", _svhn(_v73), BadDataError, ["MATLAB v7.3 (HDF5)"]),
    "svhn-no-X": ("svhn", "train", _svhn(lambda folder: scipy.io.savemat(
        str(folder / "train_32x32.mat"), {"y": svhn_arrays()[1]}) or folder / "train_32x32.mat"), BadDataError,
                  ["no 'X' variable"]),
    # TinyImageNet: a class list that would shift or overflow labels; annotations not in the official form
    "tiny-201-wnids": ("tinyimagenet", "train", _tiny(_text("wnids.txt", "\n".join(
        f"n{i:04d}" for i in range(201)))), BadDataError, ["lists 201 wnids", "200 classes"]),
    "tiny-repeated-wnid": ("tinyimagenet", "train", _tiny(_text("wnids.txt", "n0100\nn0200\nn0100\n")),
                           BadDataError, ["lists n0100 more than once"]),
    "tiny-no-wnid": ("tinyimagenet", "train", _tiny(_text("wnids.txt", "\n\n")), BadDataError, ["lists no wnid"]),
    "tiny-words-not-wnids": ("tinyimagenet", "train", _tiny(_text("wnids.txt", "n0100 goldfish\n")),
                             BadDataError, ["one wnid", "per line"]),
    "tiny-wnids-is-a-dir": ("tinyimagenet", "test", _tiny(_then(replace_with_dir, "wnids.txt")), BadDataError,
                            ["is a directory, not a file"]),
    "tiny-train-is-a-file": ("tinyimagenet", "train", _tiny(_then(replace_with_file, "train")), BadDataError,
                             ["is a file, not a directory"]),
    "tiny-annotations-with-spaces": ("tinyimagenet", "test", _tiny(_text(
        "val/val_annotations.txt", "val_0.JPEG n0100 0 0 15 15\n")), BadDataError, ["tab-separated"]),
    "tiny-annotations-one-column": ("tinyimagenet", "test", _tiny(_text(
        "val/val_annotations.txt", "val_0.JPEG\n")), BadDataError, ["'val_0.JPEG'", "FILE<TAB>WNID"]),
    "tiny-annotated-image-missing": ("tinyimagenet", "test", _tiny(_text(
        "val/val_annotations.txt", "val_0.JPEG\tn0100\nval_7.JPEG\tn0200\n")), BadDataError,
                                     ["lists val_7.JPEG, which is not in"]),
    "tiny-annotated-wnid-unknown": ("tinyimagenet", "test", _tiny(_text(
        "val/val_annotations.txt", "val_0.JPEG\tn0900\n")), BadDataError, ["'n0900'", "not in"]),
    "tiny-empty-train": ("tinyimagenet", "train", _tiny(_empty_tiny_train), DataNotFoundError,
                         ["no images were found in", "for the 2 wnids"]),
    "tiny-empty-val": ("tinyimagenet", "test", _tiny(_text("val/val_annotations.txt", "\n")), DataNotFoundError,
                       ["no images were found", "lists none"]),
    # ImageNet: more classes than outputs, train/ a file (val/ would silently define the classes), nothing found
    "imagenet-1003-classes": ("imagenet", "train", _imagenet(_many_imagenet_classes), BadDataError,
                              ["has 1003 class folders", "1000 classes"]),
    "imagenet-train-is-a-file-test": ("imagenet", "test", _imagenet(_then(replace_with_file, "train")),
                                      BadDataError, ["is a file, not a directory"]),
    "imagenet-train-is-a-file-train": ("imagenet", "train", _imagenet(_then(replace_with_file, "train")),
                                       BadDataError, ["is a file, not a directory"]),
    "imagenet-val-not-by-class": ("imagenet", "test", _imagenet(_flat_imagenet_val), DataNotFoundError,
                                  ["no images were found in", "<wnid>"]),
    "imagenet-val-extra-class": ("imagenet", "test", _imagenet(_val_extra_class), BadDataError,
                                 ["no matching class folder in"]),
    # a training class without images (an extraction cut short) would never be trained
    "imagenet-empty-train-class": ("imagenet", "train", _imagenet(_then(Path.mkdir, "train/n03")), BadDataError,
                                   ["holds no image files: that class would never be trained"]),
    "tiny-empty-train-class": ("tinyimagenet", "train", _tiny(_then(_empty_folder, "train/n0200/images")),
                               BadDataError, ["holds no image files: that class would never be trained"]),
    # a link to nothing was skipped: a class folder's shifted every later label, an image's shrank the split
    "imagenet-dangling-class-link": ("imagenet", "train", _imagenet(_then(_dangling, "train/n01")), BadDataError,
                                     ["is a symbolic link to", "unmounted-n01, which does not exist",
                                      "mount or restore what it points to, or remove the link"]),
    "tiny-dangling-image-link": ("tinyimagenet", "train", _tiny(_then(_dangling, "train/n0200/images/n0200_0.JPEG")),
                                 BadDataError, ["unmounted-n0200_0.JPEG, which does not exist"]),
    "tiny-dangling-val-image-link": ("tinyimagenet", "test", _tiny(_then(_dangling, "val/images/val_1.JPEG")),
                                     BadDataError, ["unmounted-val_1.JPEG, which does not exist"]),
}


def test_hidden_files_and_folders_are_neither_images_nor_classes(tmp_path):
    """macOS leaves `._<name>` metadata beside each file it copies (they failed mid-epoch as undecodable images);
    a `.Trash-1000` or `.ipynb_checkpoints` folder counted as a class and shifted every label after it."""
    base = write_imagenet(tmp_path)
    before = {split: build_dataset("imagenet", split, tmp_path) for split in ("train", "test")}
    (base / "train" / ".Trash-1000").mkdir()
    (base / "val" / ".ipynb_checkpoints").mkdir()
    (base / "train" / "n01" / "._n01_0.JPEG").write_bytes(b"\0\5\26\7\0\2\0\0Mac OS X        ")
    tiny = write_tiny(tmp_path)
    (tiny / "train" / "n0100" / "images" / "._n0100_0.JPEG").write_bytes(b"\0\5\26\7")
    for split in ("train", "test"):
        after = build_dataset("imagenet", split, tmp_path)
        assert after.labels.tolist() == before[split].labels.tolist() == [0, 1]
        assert [p.name for p in after.paths] == [p.name for p in before[split].paths]
    assert len(build_dataset("tinyimagenet", "train", tmp_path).labels) == 2


def test_tinyimagenet_text_files_saved_with_a_byte_order_mark_read_the_same(tmp_path):
    base = write_tiny(tmp_path)
    for name in ("wnids.txt", "val/val_annotations.txt"):
        (base / name).write_bytes(b"\xef\xbb\xbf" + (base / name).read_bytes())  # as Windows Notepad saves
    assert build_dataset("tinyimagenet", "train", tmp_path).labels.tolist() == [0, 1]
    assert build_dataset("tinyimagenet", "test", tmp_path).labels.tolist() == [0, 1]


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_malformed_file_is_one_line_naming_it(tmp_path, case):
    name, split, setup, error_type, fragments = BAD[case]
    bad_path = setup(tmp_path)
    with pytest.raises(error_type) as caught:
        build_dataset(name, split, tmp_path)
    assert_one_line(caught.value, str(bad_path), *fragments)
    assert ";" in str(caught.value)  # then the fix


def test_the_fix_for_a_downloadable_file_is_a_fresh_download(tmp_path):
    write_cifar10(tmp_path)
    cut_in_half(tmp_path / "cifar-10-batches-py" / "test_batch")
    with pytest.raises(BadDataError) as caught:
        build_dataset("cifar10", "test", tmp_path)
    assert_one_line(caught.value, "delete it and run with data.download=true", "layout: cifar-10-batches-py/")


class _RunsCode:
    """Unpickled, it would call ``pathlib.Path.touch`` on a marker: what a crafted "CIFAR" file could do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (Path(self.marker),)


def test_a_cifar_pickle_that_names_a_callable_is_refused_and_runs_nothing(tmp_path):
    folder = write_cifar10(tmp_path)
    marker = tmp_path / "ran"
    write_pickle(folder / "test_batch", {**cifar_entry(), "extra": _RunsCode(str(marker))})
    with pytest.raises(BadDataError) as caught:
        build_dataset("cifar10", "test", tmp_path)
    assert_one_line(caught.value, str(folder / "test_batch"), "is not a readable pickle", "it names pathlib",
                    "which a CIFAR batch never does; not called")
    assert not marker.exists()  # before, pickle.load called it


def python2_cifar_batch(pixels: np.ndarray, labels: list[int]) -> bytes:
    """A batch as the official files are: cPickle protocol 2 from Python 2 and numpy 1 (byte strings as
    SHORT_BINSTRING/BINSTRING, ``numpy.core.multiarray._reconstruct``), which Python 3 cannot write itself."""
    def short(text: str) -> bytes:
        raw = text.encode("latin1")
        return b"U" + bytes([len(raw)]) + raw

    count = len(labels)
    array = (short("data") + b"cnumpy.core.multiarray\n_reconstruct\nq\x03cnumpy\nndarray\nq\x04K\x00\x85" + short("b")
             + b"\x87R(K\x01M" + struct.pack("<H", count) + b"M\x00\x0c\x86cnumpy\ndtype\nq\x05" + short("u1")
             + b"K\x00K\x01\x87R(K\x03" + short("|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89"
             + b"T" + struct.pack("<i", pixels.nbytes) + pixels.tobytes() + b"tb")
    rest = (short("labels") + b"](" + b"".join(b"K" + bytes([label]) for label in labels) + b"e"
            + short("batch_label") + short("testing batch 1 of 1")
            + short("filenames") + b"](" + b"".join(short(f"f{i}.png") for i in range(count)) + b"e")
    return b"\x80\x02}q\x01(" + array + rest + b"u."


def test_the_official_python2_format_is_read(tmp_path):
    folder = write_cifar10(tmp_path)
    pixels = np.random.default_rng(3).integers(0, 256, (5, 3072), dtype=np.uint8)
    (folder / "test_batch").write_bytes(python2_cifar_batch(pixels, [3, 1, 4, 1, 5]))
    test = build_dataset("cifar10", "test", tmp_path)
    assert test.labels.tolist() == [3, 1, 4, 1, 5]
    assert torch.equal(test.images.flatten(1), torch.from_numpy(pixels))


@pytest.mark.parametrize("protocol", [2, 4, 5])  # as Python 3 writes them (2: bytes through _codecs.encode; 5: arrays
def test_cifar_pickles_of_every_protocol_numpy_writes_are_read(tmp_path, protocol):  # rebuilt from buffers)
    folder = write_cifar10(tmp_path)
    entry = cifar_entry(seed=7)
    with (folder / "test_batch").open("wb") as f:
        pickle.dump(entry, f, protocol=protocol)
    test = build_dataset("cifar10", "test", tmp_path)
    assert torch.equal(test.images.flatten(1), torch.from_numpy(entry["data"]))


# --- what the format allows is still accepted -------------------------------------------------------------------


def test_python2_bytes_keys_and_integer_pixels_are_read(tmp_path):
    folder = write_cifar10(tmp_path)
    pixels = np.arange(4 * 3072).reshape(4, 3072) % 256  # int64, all within 0..255
    write_pickle(folder / "test_batch", {b"data": pixels, b"labels": [9, 0, 1, 2]})
    test = build_dataset("cifar10", "test", tmp_path)
    assert test.labels.tolist() == [9, 0, 1, 2]
    assert torch.equal(test.images.flatten(1), torch.from_numpy(pixels.astype(np.uint8)))


def test_svhn_labels_0_and_10_are_both_the_digit_0(tmp_path):
    folder = write_svhn(tmp_path)
    write_mat(folder / "train_32x32.mat", svhn_arrays()[0], np.array([[0], [10], [9], [1]], np.float64))
    assert build_dataset("svhn", "train", tmp_path).labels.tolist() == [0, 0, 9, 1]


def test_tinyimagenet_wnids_with_windows_line_ends_read_the_same(tmp_path):
    base = write_tiny(tmp_path)
    (base / "wnids.txt").write_bytes(b"n0200\r\nn0100\r\n")
    assert build_dataset("tinyimagenet", "train", tmp_path).labels.tolist() == [0, 1]


# --- downloads --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, host, failure, reason", [
    ("cifar10", "www.cs.toronto.edu", urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name "
                                                                             "resolution")),
     "(Temporary failure in name resolution)"),
    ("svhn", "ufldl.stanford.edu", urllib.error.HTTPError("http://x", 503, "Service Unavailable", {}, None),
     "(HTTP 503 Service Unavailable)"),
])
def test_a_failed_download_names_the_host_and_placing_files_by_hand(tmp_path, monkeypatch, name, host, failure,
                                                                    reason):
    def no_network(*args, **kwargs):
        raise failure

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(DataNotFoundError) as caught:
        build_dataset(name, "train", tmp_path, download=True)
    folder = "cifar-10-batches-py" if name == "cifar10" else "svhn"
    assert_one_line(caught.value, f"{name} download from {host} failed {reason}",
                    f"download it by hand and put the files at {tmp_path / folder} (layout: ")


# --- a corrupt image: found when a batch decodes it ----------------------------------------------------------------


def test_a_corrupt_jpeg_fails_its_batch_naming_the_file(tmp_path):
    base = write_imagenet(tmp_path)
    broken = base / "train" / "n02" / "n02_0.JPEG"
    cut_in_half(broken)
    train = build_dataset("imagenet", "train", tmp_path)  # opening does not decode images
    with pytest.raises(UnreadableImageError) as caught:
        train.get_batch(torch.tensor([1]), None)
    assert_one_line(caught.value, f"cannot decode the image {broken}")


def test_an_image_the_system_refuses_mid_run_names_that_fix_not_a_good_copy(tmp_path):
    """Gone (deleted since the split was opened) or unreadable (permissions) is not undecodable: the fix differs."""
    base = write_imagenet(tmp_path)
    train = build_dataset("imagenet", "train", tmp_path)
    gone = base / "train" / "n02" / "n02_0.JPEG"
    gone.unlink()
    with pytest.raises(UnreadableImageError) as caught:
        train.get_batch(torch.tensor([1]), None)
    assert_one_line(caught.value, f"cannot read the image {gone} (No such file or directory); restore it, or set "
                                  f"data.root=DIR")
    refused = base / "train" / "n01" / "n01_0.JPEG"  # the system's refusal, as root meets one (chmod would not)
    replace_with_dir(refused)
    with pytest.raises(UnreadableImageError) as caught:
        train.get_batch(torch.tensor([0]), None)
    assert_one_line(caught.value, f"cannot read the image {refused} (Is a directory); make it readable, or set")


def test_a_corrupt_jpeg_met_by_a_prefetching_worker_process_keeps_its_one_line(tmp_path):
    """Decoded ahead in a DataLoader worker process (data.loader_workers, on CUDA by default), the error comes back
    as its type with "Caught ... in DataLoader worker process 0" and a traceback for a message: absa gives it back
    its own line."""
    from absa_cli.data.loader import PrefetchLoader

    base = write_imagenet(tmp_path)
    broken = base / "train" / "n02" / "n02_0.JPEG"
    cut_in_half(broken)
    loader = PrefetchLoader(build_dataset("imagenet", "train", tmp_path), num_workers=1)
    with pytest.raises(UnreadableImageError) as caught:
        list(loader.batches([(torch.tensor([0]), None), (torch.tensor([1]), None)]))
    assert_one_line(caught.value, f"cannot decode the image {broken}")
    assert not str(caught.value).startswith("Caught")


@pytest.mark.parametrize("where", [["--local"], ["--max-gpus", "2", "cluster.collective_timeout_s=5"]])
def test_a_corrupt_jpeg_mid_run_ends_the_run_in_one_line_and_it_stays_resumable(tmp_path, where, request):
    """Found only when a batch decodes it: the run ends failed (exit 2) on the worker's own line, naming the file,
    never a traceback, and resumes once the file is replaced. On Ray the other worker's collective fails after the
    timeout; its error is a consequence, not the line."""
    if "--local" not in where:
        request.getfixturevalue("ray_cluster")
    root = tmp_path / "data"
    base = write_tiny(root)
    for first in base.glob("train/*/images/*_0.JPEG"):  # 4 images a class: 8, two steps of 4, none dropped
        for i in (1, 2, 3):
            (first.parent / first.name.replace("_0.", f"_{i}.")).write_bytes(first.read_bytes())
    broken = base / "train" / "n0200" / "images" / "n0200_1.JPEG"
    good = broken.read_bytes()
    cut_in_half(broken)
    runs = tmp_path / "runs"
    small = ["epochs=1", f"data.root={root}", "policy.name=fixed", "batch.global_batch_size=4",
             "policy.max_global_batch=4", "batch.per_worker_max=2"]
    result = runner.invoke(app, ["train", "resnet18-tinyimagenet", *small, *where, "--runs-dir", str(runs)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"cannot decode the image {broken}" in errors[0], result.stderr
    (run,) = runs.iterdir()
    assert json.loads((run / "run.json").read_text())["status"] == "failed"
    broken.write_bytes(good)
    resumed = runner.invoke(app, ["resume", run.name, *[w for w in where if w.startswith("--") or w == "2"],
                                  "--runs-dir", str(runs)])
    assert resumed.exit_code == 0, resumed.output


@pytest.mark.parametrize("where", [["--local"], ["--max-gpus", "2"]])
def test_a_resume_onto_a_folder_whose_files_changed_is_refused_and_leaves_the_run_as_it_was(tmp_path, where, request):
    """A run stopped with a checkpoint, then an image deleted (as for a corrupt one) or renamed: the epoch's order is
    a permutation of the set's indices, so the resumed run fed some samples twice and others never, silently
    (review). Refused in one line, exit 2, before a worker starts (on Ray: from what the driver reads)."""
    if "--local" not in where:
        request.getfixturevalue("ray_cluster")
    root, runs = tmp_path / "data", tmp_path / "runs"
    base = write_tiny(root)
    for first in base.glob("train/*/images/*_0.JPEG"):  # 4 images a class: 8, two steps of 4
        for i in (1, 2, 3):
            (first.parent / first.name.replace("_0.", f"_{i}.")).write_bytes(first.read_bytes())
    process = subprocess.Popen([sys.executable, "-m", "absa_cli", "train", "resnet18-tinyimagenet", "epochs=30",
                                f"data.root={root}", "policy.name=fixed", "batch.global_batch_size=4",
                                "policy.max_global_batch=4", "--local", "--runs-dir", str(runs)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(runs.glob("*/checkpoints/epoch-0001.pt")):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143
    (run,) = runs.iterdir()
    image = base / "train" / "n0200" / "images" / "n0200_3.JPEG"
    kept = image.read_bytes()
    for change, says in ((image.unlink, "has 7 samples now and had 8"),
                         (lambda: image.with_name("n0200_9.JPEG").write_bytes(kept), "names other files now than the 8")):
        change()
        before = (run / "run.json").read_text()
        result = runner.invoke(app, ["resume", run.name, *where,
                                     "--runs-dir", str(runs)])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        (error,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert error.startswith(f"error: run {run.name}: its training set {says}") and "data.root=PATH" in error
        assert (run / "run.json").read_text() == before and not (run / "lock.json").exists()


# --- end to end: `absa train` stops before anything starts --------------------------------------------------------

runner = CliRunner()


@pytest.mark.parametrize("where", [["--local"], []])
def test_train_on_a_bad_file_is_one_error_line_and_no_run_dir(tmp_path, where):
    root = tmp_path / "data"
    folder = write_cifar10(root)
    write_pickle(folder / "data_batch_3", _labels([0, 11, 2, 3]))
    runs = tmp_path / "runs"
    result = runner.invoke(app, ["train", "c1-cifar10", *where, "epochs=1", f"data.root={root}",
                                 "--runs-dir", str(runs)])
    assert_user_error(result, str(folder / "data_batch_3"), "value 11", "data.download=true")
    assert not runs.exists()


def test_train_on_an_empty_split_says_no_images_were_found(tmp_path):
    root = tmp_path / "data"
    _empty_tiny_train(write_tiny(root))
    runs = tmp_path / "runs"
    result = runner.invoke(app, ["train", "resnet18-tinyimagenet", "--local", "epochs=1", f"data.root={root}",
                                 "--runs-dir", str(runs)])
    assert_user_error(result, "no images were found in", str(root / "tiny-imagenet-200" / "train"))
    assert "max_global_batch" not in result.stderr
    assert not runs.exists()


def test_training_says_when_the_split_holds_fewer_samples_than_data_train_size(tmp_path, one_thread):
    """The loader keeps at most the split: 20 samples were trained on where 1,000 were asked for, without a word."""
    from typer.testing import CliRunner

    from absa_cli.cli.app import app

    write_cifar10(tmp_path)  # 5 training batches of 4 samples
    result = CliRunner().invoke(app, ["train", "c1-cifar10", f"data.root={tmp_path}", "data.train_size=1000",
                                      "epochs=1", "model.width=0.05", "batch.global_batch_size=4",
                                      "policy.max_global_batch=4", "--local", "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert ("note: data.train_size=1000 is more than the 20 samples cifar10's train split holds: all 20 are used"
            in result.stderr)
