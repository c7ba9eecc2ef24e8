"""The one interface the engine sees for every dataset, and the in-memory implementation most sets use.

The trainer never iterates a dataset: it draws a global permutation, splits each step's indices over workers and
micro-batches, and asks for exactly those samples with ``get_batch``. Augmentation is keyed by a per-sample seed
rather than a global RNG so that the same global step yields bit-identical inputs however it is split.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod

import torch

from absa_cli.catalog import DatasetSpec
from absa_cli.data.augment import CropFlip


class ImageDataset(ABC):
    """A labelled image set addressed by index; subclasses decide how pixels are stored and augmented."""

    spec: DatasetSpec
    split: str
    labels: torch.Tensor  # int64, one per sample, in index order

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def __len__(self) -> int:
        return int(self.labels.numel())

    def identity(self) -> dict[str, int | str | None]:
        """What a checkpoint records of the training set, so that a resume onto another one is refused (the epoch's
        order is a permutation of its indices): its size, and for a set of files which file and label each index
        names (``files``: a digest; None for a set held in arrays, whose files hold it whole)."""
        return {"samples": len(self), "files": None}

    @abstractmethod
    def get_batch(
        self, indices: torch.Tensor, aug_seeds: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised float32 images ``N×3×S×S`` and int64 labels for ``indices``.

        ``aug_seeds=None`` means no augmentation (evaluation, curvature probe). Otherwise sample ``i`` is augmented
        as a pure function of its image and ``aug_seeds[i]``.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec.name!r}, split={self.split!r}, num_samples={len(self)})"


def check_batch_args(indices: torch.Tensor, aug_seeds: torch.Tensor | None) -> torch.Tensor:
    """Validate the index/seed pair once, here, so every implementation rejects the same mistakes."""
    indices = torch.as_tensor(indices, dtype=torch.int64)
    if indices.dim() != 1:
        raise ValueError(f"indices must be 1-D, got shape {tuple(indices.shape)}")
    if aug_seeds is not None and aug_seeds.shape != indices.shape:
        raise ValueError(
            f"aug_seeds must hold one seed per index: {tuple(aug_seeds.shape)} vs {tuple(indices.shape)}"
        )
    return indices


def normalize(images: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    """uint8 ``N×3×S×S`` → float32 ``(x/255 − mean)/std`` with the spec's per-channel statistics."""
    # One fused multiply-add instead of divide-subtract-divide, reading the uint8 pixels directly (the kernel
    # promotes them to float32 exactly): this runs on every training batch.
    shift, scale = _affine(spec.mean, spec.std, images.device)
    return torch.addcmul(shift, images, scale)


@functools.lru_cache(maxsize=32)
def _affine(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(−mean/std, 1/(255·std))`` as ``1×3×1×1`` tensors on ``device``, made once: building them from Python
    lists on a GPU is a blocking host-to-device copy, which would stall every batch."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1).to(device)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1).to(device)
    return -mean_t / std_t, 1.0 / (255.0 * std_t)


class TensorImageDataset(ImageDataset):
    """All pixels held as one uint8 ``N×3×S×S`` tensor (CIFAR, SVHN, procedural sets): gather, augment, normalise.

    The tensor may live on a GPU (``to``): a batch is then gathered, augmented and normalised there, with the same
    result as on the CPU, and only the indices cross the bus.
    """

    def __init__(
        self,
        spec: DatasetSpec,
        split: str,
        images: torch.Tensor,
        labels: torch.Tensor,
        augment: CropFlip | None,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 N×3×H×W, got {images.dtype} {tuple(images.shape)}")
        if images.shape[0] != labels.numel():
            raise ValueError(f"{images.shape[0]} images but {labels.numel()} labels")
        self.spec = spec
        self.split = split
        self.images = images.contiguous()
        self.labels = labels.to(torch.int64).contiguous()
        self.augment = augment

    def get_batch(
        self, indices: torch.Tensor, aug_seeds: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        indices = check_batch_args(indices, aug_seeds).to(self.images.device)
        images = self.images[indices]
        if aug_seeds is not None and self.augment is not None:
            images = self.augment(images, aug_seeds)
        return normalize(images, self.spec), self.labels[indices]

    @property
    def num_bytes(self) -> int:
        return self.images.nbytes + self.labels.nbytes

    def to(self, device: torch.device | str) -> TensorImageDataset:
        """The same samples with pixels and labels on ``device`` (one copy, made once)."""
        return TensorImageDataset(self.spec, self.split, self.images.to(device), self.labels.to(device), self.augment)
