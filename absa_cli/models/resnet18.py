"""ResNet-18 in torchvision's layout, with the small-input stem for CIFAR and TinyImageNet.

For inputs of at least 128 px (ImageNet, 224 px) this is exactly ``torchvision.models.resnet18`` with random
weights (11,689,512 parameters at 1,000 classes). For smaller inputs (32-px CIFAR, 64-px TinyImageNet) the
7×7 stride-2 stem conv and its 3×3 max-pool would shrink the image 4× before the first stage, so — as the
usual CIFAR/TinyImageNet ports do — the stem becomes a 3×3 stride-1 conv and the max-pool is dropped. Everything
else (four stages of two BasicBlocks, 64–512 channels, 1×1 projection shortcuts, global pool, FC) is unchanged.

``width`` is not supported: torchvision's ResNet has fixed widths, and silently ignoring a requested width would
make a run differ from its config, so ``width != 1.0`` raises ``ValueError``.
"""

from __future__ import annotations

from torch import nn

from absa_cli.models.common import check_args, kaiming_init, uses_imagenet_stem


def build_resnet18(num_classes: int, image_size: int, *, width: float = 1.0) -> nn.Module:
    """ResNet-18 for ``image_size``-px inputs (ImageNet stem at ≥128 px, 3×3 stride-1 stem below)."""
    check_args("resnet18", num_classes, image_size, width)
    if width != 1.0:
        raise ValueError(f"resnet18: width multiplier is not supported (got {width}); use width=1.0")
    from torchvision.models import resnet18  # here: torchvision costs every worker a second to import

    model = resnet18(weights=None, num_classes=num_classes)
    if not uses_imagenet_stem(image_size):
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        kaiming_init(model.conv1)  # the same He-normal fan-out init torchvision gives its own convs
        model.maxpool = nn.Identity()
    return model
