"""Model registry: one builder per name in ``catalog.MODEL_NAMES`` (models/: torch and torchvision only).

Every builder has the signature ``(num_classes, image_size, *, width=1.0) -> nn.Module``, takes NCHW float
input of ``image_size`` pixels and returns logits of shape ``(N, num_classes)``. All models use BatchNorm,
which the curvature probe can switch to eval mode. Weights are random (no pretrained weights, nothing
downloaded); seeding torch before a build makes it reproducible.

``width`` (channel multiplier, 1.0 = the paper's model):

- squeezenext: multiplies every channel count; 1.0 and 2.0 are the paper's 1.0-/2.0-SqNxt-23.
- c1, c2, alexnet: multiplies conv channels and hidden FC widths.
- resnet20/32/56: multiplies the 16/32/64 stage widths.
- resnet18: fixed torchvision widths; ``width != 1.0`` raises ``ValueError`` rather than being ignored.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from absa_cli.catalog import MODEL_NAMES
from absa_cli.models.resnet18 import build_resnet18
from absa_cli.models.resnet_cifar import build_resnet20, build_resnet32, build_resnet56
from absa_cli.models.small import build_alexnet, build_c1, build_c2
from absa_cli.models.squeezenext import build_squeezenext

MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "c1": build_c1,
    "c2": build_c2,
    "alexnet": build_alexnet,
    "resnet20": build_resnet20,
    "resnet32": build_resnet32,
    "resnet56": build_resnet56,
    "resnet18": build_resnet18,
    "squeezenext": build_squeezenext,
}

# The catalogue (the base layer) is what the config validates against; fail at import if the two ever disagree.
assert set(MODEL_BUILDERS) == set(MODEL_NAMES), "models registry and catalog.MODEL_NAMES disagree"


def build_model(name: str, num_classes: int, image_size: int, *, width: float = 1.0) -> nn.Module:
    """Build the model called ``name`` with random weights; ``ValueError`` naming the known models otherwise."""
    try:
        builder = MODEL_BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_BUILDERS)}") from None
    return builder(num_classes, image_size, width=width)


__all__ = ["MODEL_BUILDERS", "build_model"]
