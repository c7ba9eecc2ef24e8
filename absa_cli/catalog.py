"""What datasets and models exist, as plain data (the base, layer 0: no torch).

The config validates names against this catalogue and ``absa plan`` reads dataset sizes from it without
importing torch or opening any file. The loaders in ``absa_cli.data`` and the builders in ``absa_cli.models``
register against the same names; a test checks that both sides agree.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetSpec:
    """Static facts about a dataset."""

    name: str
    num_classes: int
    image_size: int  # side of the square training input, in pixels
    num_train: int  # size of the standard training split (procedural sets: the default size)
    num_test: int
    mean: tuple[float, float, float]  # per-channel mean in [0, 1] pixel units, used to normalise
    std: tuple[float, float, float]
    folder: str  # directory under ``data.root`` holding the files ("" for procedural sets)
    layout: str  # the expected on-disk layout, quoted in "data not found" errors
    downloadable: bool = False  # torchvision can fetch it when ``data.download=true``
    procedural: bool = False  # generated in memory from a seed; sizes come from the config
    streamed: bool = False  # decoded from image files batch by batch (too large to hold); the rest live in memory
    other_splits: tuple[tuple[str, int], ...] = ()  # training splits besides "train", and their sizes

    def train_size(self, split: str = "train", asked: int = 0) -> int:
        """The samples an epoch of ``split`` holds with ``data.train_size=asked`` (0: the whole split): a generated
        set makes as many as asked; a set of files has at most its split's (the loader keeps ``asked`` of them)."""
        whole = dict(self.other_splits).get(split, self.num_train)
        if self.procedural:
            return asked or whole
        return min(asked, whole) if asked else whole


_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2470, 0.2435, 0.2616)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "cifar10", 10, 32, 50_000, 10_000, _CIFAR_MEAN, _CIFAR_STD,
            folder="cifar-10-batches-py",
            layout="cifar-10-batches-py/{data_batch_1..5,test_batch} (the CIFAR-10 python version)",
            downloadable=True,
        ),
        DatasetSpec(
            "cifar100", 100, 32, 50_000, 10_000, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
            folder="cifar-100-python",
            layout="cifar-100-python/{train,test} (the CIFAR-100 python version)",
            downloadable=True,
        ),
        DatasetSpec(
            "svhn", 10, 32, 73_257, 26_032, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
            folder="svhn",
            layout="svhn/{train,test,extra}_32x32.mat (SVHN format 2, cropped digits)",
            downloadable=True, other_splits=(("extra", 531_131), ("train+extra", 604_388)),
        ),
        DatasetSpec(
            "tinyimagenet", 200, 64, 100_000, 10_000, (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821),
            folder="tiny-imagenet-200",
            layout="tiny-imagenet-200/{wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, "
            "val/val_annotations.txt} (the official zip, unpacked)",
            streamed=True,
        ),
        DatasetSpec(
            "imagenet", 1000, 224, 1_281_167, 50_000, _IMAGENET_MEAN, _IMAGENET_STD,
            folder="imagenet",
            layout="imagenet/{train,val}/<wnid>/*.JPEG (torchvision ImageFolder layout)",
            streamed=True,
        ),
        DatasetSpec(
            "shapes", 10, 32, 20_000, 2_000, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25),
            folder="", layout="generated in memory from data.seed", procedural=True,
        ),
        DatasetSpec(
            "synthetic", 10, 32, 10_000, 1_000, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25),
            folder="", layout="random tensors generated in memory", procedural=True,
        ),
    )
}

FIXED_WIDTH_MODELS = ("resnet18",)  # torchvision's widths: a model.width other than 1 cannot be built

MODEL_NAMES: tuple[str, ...] = (
    "c1", "c2", "alexnet", "resnet20", "resnet32", "resnet56", "resnet18", "squeezenext",
)


def dataset_spec(name: str) -> DatasetSpec:
    """The spec for ``name``; ``KeyError`` naming the known datasets otherwise."""
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None
