"""CIFAR ResNets (He, Zhang, Ren, Sun 2016, "Deep Residual Learning for Image Recognition", §4.2).

Layout: 3×3 conv (16) stem → three stages of ``n`` BasicBlocks with 16, 32, 64 channels (feature maps 32, 16,
8 px for CIFAR) → global average pool → FC. Depth = 6n + 2, so n = 3, 5, 9 give ResNet-20, -32, -56.

Deviation from §4.2: the paper's CIFAR nets use shortcut *option A* (identity with zero-padded channels and
stride-2 subsampling, no parameters). Here the two downsampling shortcuts use *option B*, a 1×1 stride-2 conv
+ BatchNorm projection. It adds 2,752 parameters (ResNet-20: 272,474 instead of 269,722, both the
paper's ≈0.27M), needs no channel zero-padding trick, and keeps every shortcut a plain layer the curvature code
can differentiate through. Weights use He-normal (fan-out) init; BatchNorm starts at identity.

``width`` scales the 16/32/64 stage widths (1.0 = the paper).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from absa_cli.models.common import check_args, kaiming_init, scaled

# Blocks per stage for each named depth (depth = 6n + 2).
BLOCKS_PER_STAGE: dict[str, int] = {"resnet20": 3, "resnet32": 5, "resnet56": 9}


class BasicBlock(nn.Module):
    """Two 3×3 conv → BN layers with a residual connection; ReLU after the first BN and after the sum."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            # Option B: projection only where the shape changes.
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A 6n + 2 layer CIFAR ResNet; works for any input side (the head is a global average pool)."""

    def __init__(self, blocks_per_stage: int, num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        widths = [scaled(c, width) for c in (16, 32, 64)]
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        )
        stages: list[nn.Module] = []
        in_channels = widths[0]
        for index, out_channels in enumerate(widths):
            blocks = []
            for block in range(blocks_per_stage):
                stride = 2 if index > 0 and block == 0 else 1
                blocks.append(BasicBlock(in_channels, out_channels, stride))
                in_channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        self.apply(kaiming_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def _builder(name: str) -> Callable[..., nn.Module]:
    """A registry builder for the named depth (one closure per depth, so the three share one code path)."""
    blocks_per_stage = BLOCKS_PER_STAGE[name]

    def build(num_classes: int, image_size: int, *, width: float = 1.0) -> nn.Module:
        check_args(name, num_classes, image_size, width)
        return CifarResNet(blocks_per_stage, num_classes, width)

    build.__name__ = f"build_{name}"
    build.__doc__ = (
        f"{name.upper().replace('RESNET', 'ResNet-')} (n={blocks_per_stage} blocks per stage); "
        "``width`` scales the 16/32/64 stage widths."
    )
    return build


build_resnet20 = _builder("resnet20")
build_resnet32 = _builder("resnet32")
build_resnet56 = _builder("resnet56")
