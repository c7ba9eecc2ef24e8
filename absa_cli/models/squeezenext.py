"""SqueezeNext-23 (Gholami, Kwon, Wu, Tai, Yue, Jin, Zhao, Keutzer 2018, "SqueezeNext: Hardware-Aware Neural
Network Design"), the 1.0-SqNxt-23 layout with a width multiplier.

What is implemented (from the paper's description, written here from scratch):

- stem: ImageNet-size inputs (≥128 px) get the paper's 7×7 stride-2 conv (64 channels) + 3×3/2 max-pool;
  smaller inputs (32-px CIFAR/SVHN, 64-px TinyImageNet) get a 3×3 stride-1 conv (64 channels) and no pool.
- four stages of [6, 6, 8, 1] SqueezeNext blocks with 32, 64, 128, 256 output channels; the first block of
  stages 2–4 downsamples with stride 2.
- each block, for C input channels: 1×1 conv → C/2, 1×1 conv → C/4 (the two-stage squeeze), 3×1 conv → C/2,
  1×3 conv → C/2 (the separable 3×3), 1×1 conv → output channels; every conv is followed by BatchNorm and
  ReLU, except the last, whose ReLU comes after the residual sum. The shortcut is the identity, or a 1×1
  conv + BatchNorm projection when the stride or channel count changes.
- head: 1×1 conv → 128 channels + BN + ReLU, global average pool, FC to the classes.

``width`` multiplies every channel count (stem, stages, head conv); 1.0 and 2.0 are the paper's 1.0-SqNxt-23
and 2.0-SqNxt-23.

Deviations and choices the paper leaves open: the downsampling stride sits on the block's first 1×1 conv;
the squeeze ratios are taken relative to the block's *input* channels, also in the transition blocks; the
projection shortcut is a conv + BN (the paper does not spell out its form); the small-input stem replaces the
7×7/2 conv + pool, since the paper evaluates SqueezeNext on ImageNet only.

Size: 610,088 parameters with 1,000 classes and the ImageNet stem (the paper's table lists about 0.7M for
1.0-SqNxt-23; the gap comes from the open choices above), 474,698 with 10 classes and the small stem;
width 2.0 gives 2,140,776 and 1,870,986 respectively.
"""

from __future__ import annotations

import torch
from torch import nn

from absa_cli.models.common import check_args, kaiming_init, scaled, uses_imagenet_stem

# 1.0-SqNxt-23: blocks per stage and each stage's output channels (before the width multiplier).
STAGE_BLOCKS: tuple[int, ...] = (6, 6, 8, 1)
STAGE_CHANNELS: tuple[int, ...] = (32, 64, 128, 256)
STEM_CHANNELS = 64
HEAD_CHANNELS = 128


def _conv_bn(in_channels: int, out_channels: int, kernel: tuple[int, int], stride: int = 1) -> nn.Sequential:
    padding = (kernel[0] // 2, kernel[1] // 2)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=False),
        nn.BatchNorm2d(out_channels),
    )


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: tuple[int, int], stride: int = 1) -> nn.Sequential:
    return nn.Sequential(*_conv_bn(in_channels, out_channels, kernel, stride), nn.ReLU(inplace=True))


class SqueezeNextBlock(nn.Module):
    """Two-stage 1×1 squeeze, separable 3×1 / 1×3 conv, 1×1 expand, plus a residual shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        half, quarter = max(1, in_channels // 2), max(1, in_channels // 4)
        self.body = nn.Sequential(
            _conv_bn_relu(in_channels, half, (1, 1), stride),
            _conv_bn_relu(half, quarter, (1, 1)),
            _conv_bn_relu(quarter, half, (3, 1)),
            _conv_bn_relu(half, half, (1, 3)),
            _conv_bn(half, out_channels, (1, 1)),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = _conv_bn(in_channels, out_channels, (1, 1), stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class SqueezeNext(nn.Module):
    """SqueezeNext with the given blocks per stage (``STAGE_BLOCKS`` gives SqNxt-23) and width multiplier."""

    def __init__(
        self,
        num_classes: int,
        image_size: int,
        width: float = 1.0,
        stage_blocks: tuple[int, ...] = STAGE_BLOCKS,
    ) -> None:
        super().__init__()
        stem_channels = scaled(STEM_CHANNELS, width)
        if uses_imagenet_stem(image_size):
            self.stem = nn.Sequential(
                _conv_bn_relu(3, stem_channels, (7, 7), stride=2), nn.MaxPool2d(3, stride=2, padding=1)
            )
        else:
            self.stem = _conv_bn_relu(3, stem_channels, (3, 3))
        blocks: list[nn.Module] = []
        in_channels = stem_channels
        for stage, (num_blocks, channels) in enumerate(zip(stage_blocks, STAGE_CHANNELS, strict=True)):
            out_channels = scaled(channels, width)
            for index in range(num_blocks):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(SqueezeNextBlock(in_channels, out_channels, stride))
                in_channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        head_channels = scaled(HEAD_CHANNELS, width)
        self.head = _conv_bn_relu(in_channels, head_channels, (1, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(head_channels, num_classes)
        self.apply(kaiming_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def build_squeezenext(num_classes: int, image_size: int, *, width: float = 1.0) -> nn.Module:
    """SqueezeNext-23 for ``image_size``-px inputs; ``width`` multiplies all channels (paper: 1.0, 2.0)."""
    check_args("squeezenext", num_classes, image_size, width)
    return SqueezeNext(num_classes, image_size, width)
