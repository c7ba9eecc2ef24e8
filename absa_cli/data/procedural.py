"""Seed streams for generated datasets, and the ``synthetic`` set (random pixels, random labels: throughput only).

Generated sets are produced in fixed-size chunks, each from its own generator seeded by (seed, split, chunk), so:
train and test never share samples; sample ``i`` is the same whatever ``size`` was asked for (a smaller set is a
prefix of a larger one); and the content does not depend on the global RNG or on the number of threads.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from absa_cli.catalog import DatasetSpec
from absa_cli.data.base import TensorImageDataset

_SPLIT_IDS = {"train": 1, "test": 2}
_MASK64 = (1 << 64) - 1

# Chunk renderer: (generator, chunk_size) → (uint8 chunk_size×3×S×S images, int64 labels).
ChunkRenderer = Callable[[torch.Generator, int], tuple[torch.Tensor, torch.Tensor]]


def _mix64(value: int) -> int:
    """A 64-bit finaliser (splitmix-style) so nearby (seed, split, chunk) triples give unrelated streams."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def stream_seed(seed: int, split: str, chunk: int) -> int:
    """The generator seed for one chunk of one split."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"generated datasets have splits {sorted(_SPLIT_IDS)}, not {split!r}")
    return _mix64(_mix64(_mix64(seed & _MASK64) ^ _SPLIT_IDS[split]) ^ chunk)


def generate(
    render: ChunkRenderer, seed: int, split: str, num_samples: int, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_samples`` samples from whole chunks (the last one trimmed), so the content is prefix-stable."""
    image_parts, label_parts = [], []
    num_chunks = -(-num_samples // chunk_size)
    for chunk in range(num_chunks):
        generator = torch.Generator().manual_seed(stream_seed(seed, split, chunk))
        images, labels = render(generator, chunk_size)
        image_parts.append(images)
        label_parts.append(labels)
    images = torch.cat(image_parts)[:num_samples].clone()
    labels = torch.cat(label_parts)[:num_samples].clone()
    return images, labels


def default_size(spec: DatasetSpec, split: str, size: int) -> int:
    """``size`` when positive, else the spec's default for the split."""
    if size > 0:
        return size
    return spec.num_train if split == "train" else spec.num_test


def load_synthetic(spec: DatasetSpec, split: str, *, seed: int, size: int) -> TensorImageDataset:
    """Uniform random pixels and labels; nothing to learn, no augmentation: it measures the pipeline only."""
    side = spec.image_size

    def render_noise(generator: torch.Generator, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.randint(0, 256, (chunk_size, 3, side, side), generator=generator, dtype=torch.uint8)
        labels = torch.randint(0, spec.num_classes, (chunk_size,), generator=generator, dtype=torch.int64)
        return images, labels

    images, labels = generate(render_noise, seed, split, default_size(spec, split, size), chunk_size=4096)
    return TensorImageDataset(spec, split, images, labels, augment=None)
