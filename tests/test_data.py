"""Tests for ``absa_cli.data``: every loader against files written here in the dataset's real on-disk format.

What is checked against what:
- CIFAR-10/100 pickles, SVHN ``.mat`` files: un-normalised ``get_batch(..., None)`` output equals the uint8 pixels
  we wrote (exactly), labels equal the written labels (SVHN's 10 → 0); splits and ``size`` prefixes.
- TinyImageNet and ImageNet folder trees of small JPEGs: sizes, output shapes, labels = sorted-wnid index; colours
  only approximately (JPEG is lossy).
- Missing files: ``DataNotFoundError`` with a single-line message naming the expected path and the fix.
- ``shapes`` / ``synthetic``: same seed → identical bytes, other seed or split → different; a smaller set is a
  prefix of a larger one; all ten shape classes present and balanced.
- Augmentation: a pure function of (image, seed): repeatable, independent of batch composition and of the global
  RNG, a real crop/flip of the zero-padded image (no flip for SVHN), and it does change images for some seeds.
- Normalisation: ``(x/255 − mean)/std`` with the catalogue's mean/std.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from absa_cli.catalog import DATASETS, DatasetSpec
from absa_cli.data import DATASET_NAMES, ImageDataset, build_dataset
from absa_cli.data.augment import CropFlip, random_resized_crop_box
from absa_cli.errors import DataNotFoundError, UserError


def unnormalize(images: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    return ((images * std + mean) * 255).round().to(torch.uint8)


def all_of(dataset: ImageDataset) -> tuple[torch.Tensor, torch.Tensor]:
    return dataset.get_batch(torch.arange(len(dataset)), None)


# --- fixture writers: the real formats, tiny --------------------------------------------------------------------


def write_cifar(root: Path, name: str, batches: dict[str, int], seed: int = 0) -> dict[str, tuple]:
    """Pickled batches ``{file: num_samples}``; returns ``{file: (uint8 N×3×32×32, labels)}`` as written."""
    spec = DATASETS[name]
    folder = root / spec.folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    written = {}
    for filename, count in batches.items():
        data = rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)
        labels = rng.integers(0, spec.num_classes, size=count).tolist()
        label_key = "labels" if name == "cifar10" else "fine_labels"
        entry = {"data": data, label_key: labels, "filenames": [f"{i}.png" for i in range(count)]}
        if name == "cifar100":
            entry["coarse_labels"] = [label // 5 for label in labels]
        with (folder / filename).open("wb") as f:
            pickle.dump(entry, f)
        written[filename] = (torch.from_numpy(data.reshape(count, 3, 32, 32)), labels)
    return written


def write_svhn(root: Path, split: str, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    folder = root / "svhn"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(32, 32, 3, count), dtype=np.uint8)
    digits = (np.arange(count).reshape(count, 1) + 9) % 10 + 1  # 10, 1, 2, ...: 10 means the digit 0
    scipy.io.savemat(str(folder / f"{split}_32x32.mat"), {"X": pixels, "y": digits})
    return pixels, digits


def write_jpeg(path: Path, colour: tuple[int, int, int], size: tuple[int, int], mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, colour)
    image.convert(mode).save(path, format="JPEG", quality=95)


TINY_WNIDS = ["n0300", "n0100", "n0200"]  # deliberately unsorted in wnids.txt
COLOURS = {"n0100": (200, 30, 30), "n0200": (30, 200, 30), "n0300": (30, 30, 200)}


def write_tinyimagenet(root: Path) -> None:
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(TINY_WNIDS) + "\n")
    for wnid in TINY_WNIDS:
        for i in range(2):
            write_jpeg(base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", COLOURS[wnid], (64, 64))
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    annotations = []
    for i, wnid in enumerate(["n0200", "n0300", "n0100", "n0200"]):
        mode = "L" if i == 3 else "RGB"  # TinyImageNet has a few greyscale JPEGs
        write_jpeg(base / "val" / "images" / f"val_{i}.JPEG", COLOURS[wnid], (64, 64), mode)
        annotations.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")


def write_imagenet(root: Path) -> None:
    sizes = [(300, 260), (250, 400)]
    for split, count in (("train", 2), ("val", 1)):
        for wnid in ("n02", "n01"):
            for i in range(count):
                write_jpeg(root / "imagenet" / split / wnid / f"{wnid}_{i}.JPEG", COLOURS["n0100"], sizes[i])
    (root / "imagenet" / "train" / "n01" / "notes.txt").write_text("not an image")


# --- catalogue agreement and argument checks ------------------------------------------------------------------


def test_every_catalogued_dataset_has_a_loader():
    assert set(DATASET_NAMES) == set(DATASETS)


def test_unknown_name_split_or_size_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="known"):
        build_dataset("mnist", "train", tmp_path)
    with pytest.raises(UserError, match="splits"):
        build_dataset("cifar10", "extra", tmp_path)
    with pytest.raises(UserError, match=">= 0"):
        build_dataset("shapes", "train", tmp_path, size=-1)


# --- real formats -----------------------------------------------------------------------------------------------


def test_cifar10_pickles_round_trip_exactly(tmp_path):
    train_files = {f"data_batch_{i}": 2 for i in range(1, 6)}
    written = write_cifar(tmp_path, "cifar10", {**train_files, "test_batch": 3})
    train = build_dataset("cifar10", "train", tmp_path)
    images, labels = all_of(train)
    expected_images = torch.cat([written[f][0] for f in train_files])
    expected_labels = sum((written[f][1] for f in train_files), [])
    assert len(train) == 10 and train.num_classes == 10
    assert images.dtype == torch.float32 and images.shape == (10, 3, 32, 32)
    assert torch.equal(unnormalize(images, train.spec), expected_images)
    assert labels.dtype == torch.int64 and labels.tolist() == expected_labels
    assert train.labels.tolist() == expected_labels

    test = build_dataset("cifar10", "test", tmp_path)
    assert torch.equal(unnormalize(all_of(test)[0], test.spec), written["test_batch"][0])
    first = build_dataset("cifar10", "train", tmp_path, size=3)
    assert len(first) == 3 and first.labels.tolist() == expected_labels[:3]


def test_cifar100_uses_fine_labels(tmp_path):
    written = write_cifar(tmp_path, "cifar100", {"train": 4, "test": 2}, seed=1)
    for split in ("train", "test"):
        dataset = build_dataset("cifar100", split, tmp_path)
        images, labels = all_of(dataset)
        assert dataset.num_classes == 100
        assert torch.equal(unnormalize(images, dataset.spec), written[split][0])
        assert labels.tolist() == written[split][1]


def test_svhn_mat_files_transpose_and_map_label_10_to_0(tmp_path):
    written = {split: write_svhn(tmp_path, split, count, seed) for split, count, seed in
               (("train", 5, 0), ("test", 3, 1), ("extra", 4, 2))}
    for split, (pixels, digits) in written.items():
        dataset = build_dataset("svhn", split, tmp_path)
        images, labels = all_of(dataset)
        expected = torch.from_numpy(np.transpose(pixels, (3, 2, 0, 1)).copy())  # H×W×C×N → N×C×H×W
        assert torch.equal(unnormalize(images, dataset.spec), expected)
        assert labels.tolist() == [0 if d == 10 else int(d) for d in digits.ravel()]
    assert 0 in build_dataset("svhn", "train", tmp_path).labels.tolist()  # the digit stored as 10
    combined = build_dataset("svhn", "train+extra", tmp_path)
    assert len(combined) == 9
    parts = [build_dataset("svhn", part, tmp_path).labels for part in ("train", "extra")]
    assert torch.equal(combined.labels, torch.cat(parts))


def test_tinyimagenet_tree(tmp_path):
    write_tinyimagenet(tmp_path)
    train = build_dataset("tinyimagenet", "train", tmp_path)
    images, labels = all_of(train)
    assert images.shape == (6, 3, 64, 64) and train.num_classes == 200
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]  # index in sorted(wnids), not file order
    pixels = unnormalize(images, train.spec).float().mean(dim=(2, 3))
    assert torch.allclose(pixels[0], torch.tensor([200.0, 30, 30]), atol=8)  # n0100 is red: JPEG-tolerant

    test = build_dataset("tinyimagenet", "test", tmp_path)
    test_images, test_labels = all_of(test)
    assert test_images.shape == (4, 3, 64, 64)
    assert test_labels.tolist() == [1, 2, 0, 1]  # from val_annotations.txt

    seeds = torch.tensor([3, 4])
    augmented, _ = train.get_batch(torch.tensor([0, 5]), seeds)
    assert augmented.shape == (2, 3, 64, 64)
    assert torch.equal(augmented, train.get_batch(torch.tensor([0, 5]), seeds)[0])
    assert torch.equal(augmented[1:], train.get_batch(torch.tensor([5]), seeds[1:])[0])


def test_imagenet_folder_tree(tmp_path):
    write_imagenet(tmp_path)
    train = build_dataset("imagenet", "train", tmp_path)
    assert len(train) == 4 and train.labels.tolist() == [0, 0, 1, 1]  # n01 before n02; notes.txt ignored
    images, _ = all_of(train)
    assert images.shape == (4, 3, 224, 224) and images.dtype == torch.float32
    val = build_dataset("imagenet", "test", tmp_path)
    assert val.labels.tolist() == [0, 1]
    seeds = torch.tensor([11, 12, 13])
    indices = torch.tensor([3, 0, 2])
    augmented, labels = train.get_batch(indices, seeds)
    assert augmented.shape == (3, 3, 224, 224) and labels.tolist() == [1, 0, 1]
    assert torch.equal(augmented[2:], train.get_batch(indices[2:], seeds[2:])[0])
    assert len(build_dataset("imagenet", "train", tmp_path, size=3)) == 3
    # a subset spreads over the classes (the files are listed class by class): the first 2 would be class 0 only
    assert build_dataset("imagenet", "train", tmp_path, size=2).labels.tolist() == [0, 1]
    assert build_dataset("imagenet", "train", tmp_path, size=2, subset="first").labels.tolist() == [0, 0]


def test_a_saved_config_from_before_data_subset_keeps_its_first_n_files():
    """A run saved before the key existed trained on the first N files: it must resume on them (the key is part of
    its recipe); a new run spreads."""
    from absa_cli import config as config_mod

    new = config_mod.load("resnet18-tinyimagenet", ["data.train_size=1000"])
    assert new.data.subset == "spread" and "data.subset" in config_mod.identity(new)
    saved = config_mod.to_yaml(new).replace("  subset: spread\n", "")
    assert "subset" not in saved
    assert config_mod.from_yaml(saved).data.subset == "first"
    assert config_mod.from_yaml(config_mod.to_yaml(new)).data.subset == "spread"


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "tinyimagenet", "imagenet"])
def test_missing_data_is_one_line_naming_the_path(tmp_path, name):
    spec = DATASETS[name]
    with pytest.raises(DataNotFoundError) as caught:
        build_dataset(name, "train", tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    assert str(tmp_path / spec.folder) in message
    assert spec.layout in message
    assert ("data.download=true" in message) == spec.downloadable
    assert "data.root" in message


def test_tinyimagenet_missing_val_annotations(tmp_path):
    write_tinyimagenet(tmp_path)
    (tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DataNotFoundError, match="val_annotations.txt"):
        build_dataset("tinyimagenet", "test", tmp_path)


# --- generated sets ---------------------------------------------------------------------------------------------


def test_shapes_are_deterministic_per_seed_and_split(tmp_path):
    first = build_dataset("shapes", "train", tmp_path, seed=3, size=1500)
    again = build_dataset("shapes", "train", tmp_path, seed=3, size=1500)
    other_seed = build_dataset("shapes", "train", tmp_path, seed=4, size=1500)
    test = build_dataset("shapes", "test", tmp_path, seed=3, size=1500)
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert not torch.equal(first.images, other_seed.images)
    assert not torch.equal(first.images, test.images)
    prefix = build_dataset("shapes", "train", tmp_path, seed=3, size=700)
    assert torch.equal(prefix.images, first.images[:700])


def test_shapes_classes_all_present_and_balanced(tmp_path):
    dataset = build_dataset("shapes", "train", tmp_path, seed=0, size=2000)
    counts = torch.bincount(dataset.labels, minlength=10)
    assert counts.tolist() == [200] * 10
    assert dataset.images.dtype == torch.uint8 and dataset.images.shape == (2000, 3, 32, 32)
    # Not blank: images vary, and each class has visibly different mean images from the others.
    class_means = torch.stack([dataset.images[dataset.labels == c].float().mean(0) for c in range(10)])
    assert dataset.images.float().std() > 20
    assert torch.cdist(class_means.flatten(1), class_means.flatten(1)).fill_diagonal_(1e9).min() > 1


def test_default_sizes_come_from_the_spec(tmp_path):
    spec = DATASETS["synthetic"]
    assert len(build_dataset("synthetic", "train", tmp_path)) == spec.num_train
    assert len(build_dataset("synthetic", "test", tmp_path)) == spec.num_test


def test_synthetic_is_deterministic(tmp_path):
    first = build_dataset("synthetic", "train", tmp_path, seed=1, size=100)
    again = build_dataset("synthetic", "train", tmp_path, seed=1, size=100)
    assert torch.equal(first.get_batch(torch.arange(100), torch.arange(100))[0], all_of(again)[0])  # no aug
    assert not torch.equal(first.images, build_dataset("synthetic", "test", tmp_path, seed=1, size=100).images)


# --- augmentation and normalisation -----------------------------------------------------------------------------


def test_augmentation_is_a_pure_function_of_image_and_seed(tmp_path):
    dataset = build_dataset("shapes", "train", tmp_path, seed=0, size=64)
    indices = torch.tensor([5, 9, 17, 5])
    seeds = torch.tensor([101, -7, 2**40 + 3, 102])
    torch.manual_seed(0)
    images, labels = dataset.get_batch(indices, seeds)
    torch.manual_seed(1)  # the global RNG must not matter
    assert torch.equal(images, dataset.get_batch(indices, seeds)[0])
    for i in range(len(indices)):  # nor which other samples share the batch
        alone, alone_label = dataset.get_batch(indices[i:i + 1], seeds[i:i + 1])
        assert torch.equal(alone[0], images[i]) and alone_label[0] == labels[i]
    plain = dataset.get_batch(indices, None)[0]
    many = dataset.get_batch(torch.full((32,), 5), torch.arange(32))[0]
    assert not torch.equal(images, plain)
    assert len({tuple(image.flatten().tolist()) for image in many}) > 10  # seeds give different crops/flips


@pytest.mark.parametrize("flip", [True, False])
def test_crop_flip_is_a_window_of_the_zero_padded_image(flip):
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8)
    augment = CropFlip(padding=2, flip=flip)
    out = augment(images, torch.arange(40) * 977)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    flips_seen = set()
    for image, result in zip(padded, out):
        windows = {(dy, dx): image[:, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)}
        matches = {(offset, flipped) for offset, window in windows.items() for flipped in (False, True)
                   if torch.equal(result, window.flip(-1) if flipped else window)}
        assert matches, "output is not a crop of the padded image"
        flips_seen |= {flipped for _, flipped in matches}
    assert (True in flips_seen) == flip


def test_svhn_augmentation_never_flips(tmp_path):
    write_svhn(tmp_path, "train", 2, seed=0)
    dataset = build_dataset("svhn", "train", tmp_path)
    assert dataset.augment == CropFlip(padding=4, flip=False)


def test_normalisation_uses_the_catalogue_mean_and_std(tmp_path):
    dataset = build_dataset("synthetic", "train", tmp_path, size=16)
    spec = dataset.spec
    images, _ = all_of(dataset)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    assert torch.allclose(images, (dataset.images.float() / 255 - mean) / std, atol=1e-5)


def test_random_resized_crop_box_stays_inside_the_image():
    for seed in range(200):
        generator = torch.Generator().manual_seed(seed)
        top, left, height, width = random_resized_crop_box(120, 300, generator)
        assert 0 <= top and top + height <= 120 and 0 <= left and left + width <= 300
        assert height > 0 and width > 0


def test_a_relative_root_that_holds_nothing_says_where_it_was_read_from(tmp_path, monkeypatch):
    """`data.root=data` trained from one directory and probed (`absa hessian`) or resumed from another: the path
    in the message is relative, so the message says relative to what."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataNotFoundError) as caught:
        build_dataset("cifar10", "train", "data")
    assert f"expected data/cifar-10-batches-py/data_batch_1, relative to the current directory {tmp_path} (" \
        in str(caught.value)
    with pytest.raises(DataNotFoundError) as caught:
        build_dataset("cifar10", "train", tmp_path)
    assert "relative to" not in str(caught.value)
