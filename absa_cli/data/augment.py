"""Augmentations that are pure functions of (image, per-sample seed).

Why not torchvision transforms: they draw from the global RNG, so a sample's crop would depend on which worker
processed it and what ran before. Here every random choice is a hash of the sample's own int64 seed, computed
with integer tensor arithmetic for a whole batch at once — no RNG state, no Python loop, and the same answer for a
sample whether it sits in a batch of 1 or of 4096.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_MASK32 = 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """An avalanche mix of 32-bit values held in int64.

    Both multipliers are below 2**31, so with inputs below 2**32 every product stays below 2**63: no signed
    overflow, hence identical results on every platform.
    """
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x6B43A9B5) & _MASK32
    return x ^ (x >> 16)


def seed_streams(seeds: torch.Tensor, num_streams: int) -> torch.Tensor:
    """``num_streams`` independent uniform 32-bit values per seed (as int64): ``[..., k]`` is stream k.

    The streams are hashed together, as one tensor with a trailing axis of streams (the hash is elementwise): on a
    GPU every operation is a kernel launch, and this runs on every training batch."""
    seeds = seeds.to(torch.int64)
    low = seeds & _MASK32
    high = (seeds >> 32) & _MASK32  # arithmetic shift, then mask: negative seeds are fine
    base = _hash32(low ^ _hash32(high ^ 0x9E3779B9))
    return _hash32(base.unsqueeze(-1) ^ _stream_salts(num_streams, base.device))


@functools.lru_cache(maxsize=32)
def _stream_salts(num_streams: int, device: torch.device) -> torch.Tensor:
    """Stream k's salt, ``(0x632BE5AB · (k + 1)) mod 2**32``, for k < ``num_streams``: made once per device (from a
    Python list it would be a blocking host-to-device copy per batch)."""
    return torch.tensor([(0x632BE5AB * (k + 1)) & _MASK32 for k in range(num_streams)], dtype=torch.int64).to(device)


@dataclass(frozen=True)
class CropFlip:
    """Random crop of the original size from a zero-padded image, plus an optional horizontal flip.

    The standard CIFAR recipe (pad 4, crop 32, flip), applied to a uint8 batch by one gather, on whatever device
    the images are: integer hashing and a gather give the same bytes on a GPU as on the CPU.
    """

    padding: int
    flip: bool

    def __call__(self, images: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        num_images, num_channels, height, width = images.shape
        pad = self.padding
        device = images.device
        draws = seed_streams(seeds.to(device), 3)  # per image: the crop's row and column offsets, the flip
        offset_y, offset_x = (draws[:, :2] % (2 * pad + 1)).unbind(1)
        flip_raw = draws[:, 2]
        padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
        rows = offset_y[:, None] + torch.arange(height, device=device)  # N×H
        cols_plain = torch.arange(width, device=device)
        if self.flip:
            flipped = (flip_raw & 1).bool()[:, None]
            cols = offset_x[:, None] + torch.where(flipped, width - 1 - cols_plain, cols_plain)  # N×W
        else:
            cols = offset_x[:, None] + cols_plain
        batch_index = torch.arange(num_images, device=device)[:, None, None, None]
        channel_index = torch.arange(num_channels, device=device)[None, :, None, None]
        return padded[batch_index, channel_index, rows[:, None, :, None], cols[:, None, None, :]]


def sample_generator(seed: torch.Tensor | int) -> torch.Generator:
    """A private generator for one sample's augmentation on the per-image (PIL) path."""
    return torch.Generator().manual_seed(int(seed))


def random_resized_crop_box(
    height: int,
    width: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """``(top, left, crop_height, crop_width)`` of an Inception-style crop: random area fraction and aspect.

    Draws only from ``generator`` (torchvision's version uses the global RNG). Falls back to the largest central
    crop within the aspect range when ten draws do not fit.
    """
    area = height * width
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        draws = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * draws[0])
        aspect = math.exp(log_low + (log_high - log_low) * draws[1])
        crop_width = round(math.sqrt(target_area * aspect))
        crop_height = round(math.sqrt(target_area / aspect))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = int(torch.randint(0, height - crop_height + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - crop_width + 1, (1,), generator=generator))
            return top, left, crop_height, crop_width
    aspect = width / height
    if aspect < ratio[0]:
        crop_width, crop_height = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        crop_height, crop_width = height, round(height * ratio[1])
    else:
        crop_width, crop_height = width, height
    return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width
