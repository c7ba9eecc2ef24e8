"""The paper's small convolutional nets: C1, C2 and an AlexNet-style CIFAR/SVHN net.

C1 and C2 are the two "shallow" nets of Yao, Gholami et al. (and of their earlier Hessian-analysis paper); the
AlexNet-style net is the usual two-conv cuda-convnet / TensorFlow-tutorial CIFAR network. None of them has a
global pool, so the first fully connected layer's input size depends on the image side; it is computed here
from ``image_size`` so the same builders serve 32-px CIFAR/SVHN and 64-px TinyImageNet.

``width`` scales every convolution's channel count and the hidden fully connected widths (1.0 = the paper).
"""

from __future__ import annotations

import torch
from torch import nn

from absa_cli.models.common import check_args, kaiming_init, pooled_size, scaled


def _flat_features(name: str, channels: int, side: int) -> int:
    """``channels × side²``, or a ``ValueError`` when the input was too small to survive the pooling."""
    if side < 1:
        raise ValueError(f"{name}: image too small; the feature map shrinks to {side} px before the classifier")
    return channels * side * side


def _pool_3s2(side: int) -> int:
    # 3×3 max-pool, stride 2, padding 1: the "SAME"-padded pooling of the cuda-convnet / TF CIFAR nets,
    # which halves the side exactly (32 → 16 → 8) instead of PyTorch's unpadded 32 → 15 → 7.
    return pooled_size(side, kernel=3, stride=2, padding=1)


class C1(nn.Module):
    """Two blocks of [5×5 conv (64, pad 2) → ReLU → BatchNorm → 3×3/2 max-pool], then FC 384 → 192 → classes.

    Order conv → ReLU → BN follows the paper's description of C1. The conv keeps its bias because the ReLU
    sits between it and the BatchNorm (so the bias is not cancelled by the normalisation). The pools are
    padded by 1, so at 32 px the classifier sees 64 × 8 × 8 features (unpadded pools would give 64 × 7 × 7).
    """

    def __init__(self, num_classes: int, image_size: int, width: float = 1.0) -> None:
        super().__init__()
        channels = scaled(64, width)
        self.features = nn.Sequential(
            nn.Conv2d(3, channels, 5, padding=2), nn.ReLU(inplace=True), nn.BatchNorm2d(channels),
            nn.MaxPool2d(3, stride=2, padding=1),
            nn.Conv2d(channels, channels, 5, padding=2), nn.ReLU(inplace=True), nn.BatchNorm2d(channels),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        flat = _flat_features("c1", channels, _pool_3s2(_pool_3s2(image_size)))
        hidden1, hidden2 = scaled(384, width), scaled(192, width)
        self.classifier = nn.Sequential(
            nn.Linear(flat, hidden1), nn.ReLU(inplace=True),
            nn.Linear(hidden1, hidden2), nn.ReLU(inplace=True),
            nn.Linear(hidden2, num_classes),
        )
        self.apply(kaiming_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class C2(nn.Module):
    """Four unpadded 3×3 convs (64, 64, 128, 128), each → ReLU → BatchNorm, 2×2 max-pool after the 2nd and
    4th, then FC 256 → 256 → classes. At 32 px the classifier sees 128 × 5 × 5 features (32→30→28→14→12→10→5).
    """

    def __init__(self, num_classes: int, image_size: int, width: float = 1.0) -> None:
        super().__init__()
        c64, c128 = scaled(64, width), scaled(128, width)
        layers: list[nn.Module] = []
        in_channels, side = 3, image_size
        for index, out_channels in enumerate((c64, c64, c128, c128)):
            layers += [nn.Conv2d(in_channels, out_channels, 3), nn.ReLU(inplace=True), nn.BatchNorm2d(out_channels)]
            side -= 2
            if index % 2 == 1:
                layers.append(nn.MaxPool2d(2))
                side //= 2
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        flat = _flat_features("c2", c128, side)
        hidden = scaled(256, width)
        self.classifier = nn.Sequential(
            nn.Linear(flat, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )
        self.apply(kaiming_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class AlexNetSmall(nn.Module):
    """The AlexNet-style CIFAR/SVHN net ("cifar10 quick"/cuda-convnet lineage), modernised.

    Two blocks of [5×5 conv (64, pad 2, no bias) → BatchNorm → ReLU → 3×3/2 max-pool], then
    dropout(0.5) → FC 384 → ReLU → dropout(0.5) → FC 192 → ReLU → FC classes.

    It differs from :class:`C1` on purpose: the original's local response normalisation is replaced by
    BatchNorm placed before the ReLU (so the convs drop their redundant bias), and the classifier has dropout.
    Dropout is inactive in ``eval()`` mode, which the curvature probe uses, so Hessian estimates are not noisy.
    """

    def __init__(self, num_classes: int, image_size: int, width: float = 1.0, dropout: float = 0.5) -> None:
        super().__init__()
        channels = scaled(64, width)
        self.features = nn.Sequential(
            nn.Conv2d(3, channels, 5, padding=2, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
            nn.Conv2d(channels, channels, 5, padding=2, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        flat = _flat_features("alexnet", channels, _pool_3s2(_pool_3s2(image_size)))
        hidden1, hidden2 = scaled(384, width), scaled(192, width)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(flat, hidden1), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden1, hidden2), nn.ReLU(inplace=True),
            nn.Linear(hidden2, num_classes),
        )
        self.apply(kaiming_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def build_c1(num_classes: int, image_size: int, *, width: float = 1.0) -> nn.Module:
    """C1 for ``image_size``-px inputs; ``width`` scales all channels and hidden widths."""
    check_args("c1", num_classes, image_size, width)
    return C1(num_classes, image_size, width)


def build_c2(num_classes: int, image_size: int, *, width: float = 1.0) -> nn.Module:
    """C2 for ``image_size``-px inputs; ``width`` scales all channels and hidden widths."""
    check_args("c2", num_classes, image_size, width)
    return C2(num_classes, image_size, width)


def build_alexnet(num_classes: int, image_size: int, *, width: float = 1.0) -> nn.Module:
    """The AlexNet-style small net for ``image_size``-px inputs; ``width`` scales all channels and hidden widths."""
    check_args("alexnet", num_classes, image_size, width)
    return AlexNetSmall(num_classes, image_size, width)
