"""``shapes``: ten rendered shape classes on cluttered backgrounds, generated from a seed (the quickstart/CI set).

Why a procedural set: CI and the quickstart must train something real without a download, and the curvature
probe and batch-size policy only behave meaningfully on a task that is learnable but not trivial. Each image is
one shape (random position, scale, rotation, colour) over a low-frequency colour gradient with distractor blobs
and lines, plus pixel noise; a small CNN needs several epochs to pass 90% test accuracy.

Rendering is vectorised: every shape is a signed distance function evaluated on a batch of coordinate grids after
inverse rotation/scale/translation, and turned into a soft (anti-aliased) coverage mask. The ten shapes are chosen
to stay distinct under any rotation and under horizontal flips (the augmentation).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from absa_cli.catalog import DatasetSpec
from absa_cli.data.augment import CropFlip
from absa_cli.data.base import TensorImageDataset
from absa_cli.data.procedural import default_size, generate

SIDE = 32
CLASS_NAMES = (
    "disk", "square", "triangle", "ring", "cross", "star", "bar", "crescent", "corner", "semicircle",
)
_CHUNK_SIZE = 1000  # a multiple of the class count: every chunk is exactly balanced

# Difficulty knobs (tuned so a small CNN passes 90% only after several epochs; see the module docstring).
_SCALE_RANGE = (0.4, 0.6)  # shape radius as a fraction of the half-image (≈6–10 px)
_CONTRAST_RANGE = (0.35, 0.7)  # shape brightness above/below the background's base colour
_CENTRE_RANGE = 0.3  # shape centre within ±this fraction of the half-image (≈±5 px) of the middle
_WAVE_AMPLITUDE = 0.2  # per-channel amplitude of each background colour wave
_NUM_BLOBS = 3  # distractor disks under the shape
_NUM_LINES = 1  # distractor lines over the shape (partial occlusion)
_NOISE_STD = 0.05  # Gaussian pixel noise, in [0, 1] intensity units

_SHAPE_AUGMENT = CropFlip(padding=2, flip=True)

SignedDistance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _box(u: torch.Tensor, v: torch.Tensor, half_u: float, half_v: float) -> torch.Tensor:
    qu, qv = u.abs() - half_u, v.abs() - half_v
    outside = torch.hypot(qu.clamp(min=0), qv.clamp(min=0))
    return outside + torch.maximum(qu, qv).clamp(max=0)


def _triangle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # Equilateral, circumradius 1: the largest distance past any of the three edge lines (inradius 0.5).
    angles = (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3)
    planes = [u * math.cos(a) + v * math.sin(a) for a in angles]
    return torch.maximum(torch.maximum(planes[0], planes[1]), planes[2]) - 0.5


def _star(u: torch.Tensor, v: torch.Tensor, outer: float = 1.0, inner: float = 0.42) -> torch.Tensor:
    # Fold the plane into one half-spike, then measure the distance to its edge (tip → inner vertex).
    sector = 2 * math.pi / 5
    radius = torch.hypot(u, v)
    angle = (torch.remainder(torch.atan2(v, u) + sector / 2, sector) - sector / 2).abs()
    qx, qy = radius * torch.cos(angle), radius * torch.sin(angle)
    ix, iy = inner * math.cos(sector / 2), inner * math.sin(sector / 2)
    ex, ey = ix - outer, iy
    t = (((qx - outer) * ex + qy * ey) / (ex * ex + ey * ey)).clamp(0, 1)
    distance = torch.hypot(qx - outer - t * ex, qy - t * ey)
    inside = (ex * qy - ey * (qx - outer)) > 0
    return torch.where(inside, -distance, distance)


def _crescent(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    u = u + 0.2  # recentre: the bite removes the right side
    return torch.maximum(torch.hypot(u, v) - 0.9, 0.75 - torch.hypot(u - 0.45, v))


def _semicircle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    v = v + 0.4  # flat side at v = −0.4, so the shape's centre sits near the origin
    return torch.maximum(torch.hypot(u, v) - 0.95, -v)


_SHAPES: tuple[SignedDistance, ...] = (
    lambda u, v: torch.hypot(u, v) - 0.85,
    lambda u, v: _box(u, v, 0.72, 0.72),
    _triangle,
    lambda u, v: (torch.hypot(u, v) - 0.7).abs() - 0.22,
    lambda u, v: torch.minimum(_box(u, v, 0.95, 0.26), _box(u, v, 0.26, 0.95)),
    _star,
    lambda u, v: _box(u, v, 0.95, 0.28),
    _crescent,
    lambda u, v: torch.minimum(_box(u + 0.45, v, 0.3, 0.9), _box(u, v - 0.6, 0.75, 0.3)),
    _semicircle,
)


def _uniform(generator: torch.Generator, low: float, high: float, *shape: int) -> torch.Tensor:
    return low + (high - low) * torch.rand(*shape, generator=generator)


def _coverage(signed_distance_px: torch.Tensor) -> torch.Tensor:
    """Soft inside-mask: 1 inside, 0 outside, a linear ramp one pixel wide across the edge (anti-aliasing)."""
    return (0.5 - signed_distance_px).clamp(0, 1)


def _background(
    generator: torch.Generator, x: torch.Tensor, y: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A base colour (N×3, returned too) plus two crossed low-frequency colour waves: clutter without class cues."""
    base = torch.rand(n, 3, generator=generator)
    canvas = base[:, :, None, None].expand(n, 3, SIDE, SIDE).clone()
    for _ in range(2):
        direction = _uniform(generator, 0.0, 2 * math.pi, n, 1, 1)
        frequency = _uniform(generator, 0.5, 2.5, n, 1, 1)
        phase = _uniform(generator, 0.0, 2 * math.pi, n, 1, 1)
        wave = torch.sin(math.pi * frequency * (x * torch.cos(direction) + y * torch.sin(direction)) + phase)
        amplitude = _uniform(generator, -_WAVE_AMPLITUDE, _WAVE_AMPLITUDE, n, 3, 1, 1)
        canvas += amplitude * wave[:, None]
    return canvas, base


def _paint(canvas: torch.Tensor, coverage: torch.Tensor, colour: torch.Tensor) -> None:
    """Alpha-composite ``colour`` (N×3) over ``canvas`` (N×3×S×S) where ``coverage`` (N×S×S) says, in place."""
    alpha = coverage[:, None]
    canvas.mul_(1 - alpha).add_(alpha * colour[:, :, None, None])


def _draw_blobs(generator: torch.Generator, canvas: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> None:
    n = canvas.shape[0]
    for _ in range(_NUM_BLOBS):
        cx, cy = _uniform(generator, -1, 1, n, 1, 1), _uniform(generator, -1, 1, n, 1, 1)
        radius_px = _uniform(generator, 1.0, 3.0, n, 1, 1)
        distance_px = torch.hypot(x - cx, y - cy) * (SIDE / 2) - radius_px
        _paint(canvas, _coverage(distance_px), torch.rand(n, 3, generator=generator))


def _draw_lines(generator: torch.Generator, canvas: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> None:
    n = canvas.shape[0]
    for _ in range(_NUM_LINES):
        ax, ay = _uniform(generator, -1, 1, n, 1, 1), _uniform(generator, -1, 1, n, 1, 1)
        bx, by = _uniform(generator, -1, 1, n, 1, 1), _uniform(generator, -1, 1, n, 1, 1)
        half_width_px = _uniform(generator, 0.3, 0.8, n, 1, 1)
        dx, dy = bx - ax, by - ay
        t = (((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy + 1e-6)).clamp(0, 1)
        distance_px = torch.hypot(x - ax - t * dx, y - ay - t * dy) * (SIDE / 2) - half_width_px
        _paint(canvas, _coverage(distance_px), torch.rand(n, 3, generator=generator))


def _shape_colour(generator: torch.Generator, base: torch.Tensor) -> torch.Tensor:
    """A colour clearly lighter or darker than the background's base (so the shape is visible), hue jittered.

    Goes the way that has room: darker on a light background, lighter on a dark one.
    """
    n = base.shape[0]
    contrast = _uniform(generator, *_CONTRAST_RANGE, n, 1)
    direction = torch.where(base.mean(1, keepdim=True) > 0.5, -1.0, 1.0)
    jitter = _uniform(generator, -0.15, 0.15, n, 3)
    return (base + direction * contrast + jitter).clamp(0, 1)


def _draw_shapes(
    generator: torch.Generator,
    canvas: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    labels: torch.Tensor,
    base: torch.Tensor,
) -> None:
    n = canvas.shape[0]
    scale = _uniform(generator, *_SCALE_RANGE, n, 1, 1)
    # Near the middle: the paper's small nets end in fully connected layers, which must learn each position apart.
    cx, cy = (_uniform(generator, -_CENTRE_RANGE, _CENTRE_RANGE, n, 1, 1) for _ in range(2))
    rotation = _uniform(generator, 0.0, 2 * math.pi, n, 1, 1)
    colour = _shape_colour(generator, base)
    # Inverse transform: image coordinates → the shape's own frame, where every shape spans about [-1, 1].
    cos, sin = torch.cos(rotation), torch.sin(rotation)
    u = ((x - cx) * cos + (y - cy) * sin) / scale
    v = (-(x - cx) * sin + (y - cy) * cos) / scale
    signed_distance = torch.empty(n, SIDE, SIDE)
    for label, shape in enumerate(_SHAPES):
        members = (labels == label).nonzero().squeeze(1)
        if members.numel():
            signed_distance[members] = shape(u[members], v[members])
    _paint(canvas, _coverage(signed_distance * scale * (SIDE / 2)), colour)


def render_shapes(generator: torch.Generator, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk of images (uint8 N×3×32×32) and balanced labels, drawn only from ``generator``."""
    labels = torch.randperm(chunk_size, generator=generator) % len(_SHAPES)
    centres = (torch.arange(SIDE, dtype=torch.float32) + 0.5) / (SIDE / 2) - 1
    y, x = (c[None] for c in torch.meshgrid(centres, centres, indexing="ij"))  # 1×S×S pixel centres in [-1, 1]
    canvas, base = _background(generator, x, y, chunk_size)
    _draw_blobs(generator, canvas, x, y)
    _draw_shapes(generator, canvas, x, y, labels, base)
    _draw_lines(generator, canvas, x, y)
    canvas += _NOISE_STD * torch.randn(canvas.shape, generator=generator)
    images = (canvas.clamp(0, 1) * 255).round().to(torch.uint8)
    return images, labels


def load_shapes(spec: DatasetSpec, split: str, *, seed: int, size: int) -> TensorImageDataset:
    """``size`` (or the spec's default) shapes images for ``split``; crop (pad 2) and flip augmentation."""
    images, labels = generate(render_shapes, seed, split, default_size(spec, split, size), _CHUNK_SIZE)
    return TensorImageDataset(spec, split, images, labels, _SHAPE_AUGMENT)
