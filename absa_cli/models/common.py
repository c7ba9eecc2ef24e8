"""Small helpers the model builders share: channel scaling, stem choice, input checks, initialisation.

Kept apart from the registry so that each architecture module imports only what it needs and the registry
stays a plain name → builder table.
"""

from __future__ import annotations

from torch import nn

# Inputs at least this large get the ImageNet stem (strided 7×7 conv + max-pool); smaller ones (CIFAR/SVHN at
# 32 px, TinyImageNet at 64 px) keep full resolution with a stride-1 3×3 stem, since downsampling 32 px by 4
# before the first stage would leave almost no spatial extent for the later stages.
IMAGENET_STEM_MIN_SIZE = 128


def scaled(channels: int, width: float) -> int:
    """``channels × width`` rounded to the nearest integer, never below 1."""
    return max(1, int(round(channels * width)))


def uses_imagenet_stem(image_size: int) -> bool:
    """Whether an input of ``image_size`` pixels gets the strided ImageNet stem rather than the small-input one."""
    return image_size >= IMAGENET_STEM_MIN_SIZE


def check_args(name: str, num_classes: int, image_size: int, width: float) -> None:
    """Reject arguments no model can honour, with a message that names the model and the bad value."""
    if num_classes < 1:
        raise ValueError(f"{name}: num_classes must be >= 1, got {num_classes}")
    if image_size < 8:
        raise ValueError(f"{name}: image_size must be >= 8 pixels, got {image_size}")
    if not width > 0:
        raise ValueError(f"{name}: width must be > 0, got {width}")


def pooled_size(size: int, kernel: int, stride: int, padding: int = 0) -> int:
    """Output side of a conv/pool window applied to a ``size``-pixel input (PyTorch floor rounding)."""
    return (size + 2 * padding - kernel) // stride + 1


def kaiming_init(module: nn.Module) -> None:
    """He-normal convolutions (fan-out, ReLU gain), BatchNorm at identity, linear layers at PyTorch's default.

    Applied with ``module.apply``; the fan-out mode matches He et al. 2015 and torchvision's ResNets.
    """
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
