"""Model registry and builders (``absa_cli.models``), checked on CPU with 2-image batches.

What is checked, against what reference:
- the registry's names are exactly ``catalog.MODEL_NAMES`` (the config validates against the catalogue);
- every model at each preset's input size (CIFAR/SVHN 32 px, TinyImageNet 64 px with 200 classes, ImageNet
  224 px with 1,000 classes) runs forward + backward, returns ``(N, num_classes)`` logits and gives every
  trainable parameter a finite, non-zero gradient (nothing dead or detached);
- parameter counts against published sizes: torchvision's ResNet-18 (11,689,512 exactly), the CIFAR
  ResNet-20/-56 of He et al. 2016 (≈0.27M/≈0.85M; option-B shortcuts add 2,752), SqueezeNext-23 of
  Gholami et al. 2018 (paper ≈0.7M on ImageNet) — plus exact counts for this implementation, so an
  accidental change to a layout shows up here;
- ``width`` grows SqueezeNext; unknown names and unsupported widths raise ``ValueError``;
- seeding before a build gives identical weights; the package never imports ``ray`` (layer 1).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

import absa_cli.models as models_pkg
from absa_cli.catalog import MODEL_NAMES
from absa_cli.models import MODEL_BUILDERS, build_model

# (model, num_classes, image_size) for each preset-style use of a model.
CASES = [(name, 10, 32) for name in MODEL_NAMES] + [
    ("c1", 100, 32),  # CIFAR-100
    ("resnet18", 200, 64),  # TinyImageNet
    ("squeezenext", 200, 64),
    ("c2", 200, 64),
    ("resnet18", 1000, 224),  # ImageNet
]


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_matches_catalog() -> None:
    assert set(MODEL_BUILDERS) == set(MODEL_NAMES)


@pytest.mark.parametrize(("name", "num_classes", "image_size"), CASES)
def test_forward_backward(name: str, num_classes: int, image_size: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes, image_size)
    model.train()
    images = torch.randn(2, 3, image_size, image_size)
    labels = torch.tensor([0, num_classes - 1])
    logits = model(images)
    assert logits.shape == (2, num_classes)
    assert torch.isfinite(logits).all()
    nn.functional.cross_entropy(logits, labels).backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, f"{name}: {param_name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name}: {param_name} has a non-finite gradient"
        assert param.grad.abs().sum() > 0, f"{name}: {param_name} has an all-zero gradient"


def test_models_have_batchnorm() -> None:
    # The curvature probe switches BatchNorm to eval mode; every model must have some for that to matter.
    for name in MODEL_NAMES:
        model = build_model(name, 10, 32)
        assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()), name


@pytest.mark.parametrize(
    ("name", "num_classes", "image_size", "expected"),
    [
        ("resnet18", 1000, 224, 11_689_512),  # torchvision.models.resnet18, the published count
        ("resnet20", 10, 32, 272_474),  # He et al. ≈0.27M (option A: 269,722) + 2,752 for option-B projections
        ("resnet32", 10, 32, 466_906),  # ≈0.46M
        ("resnet56", 10, 32, 855_770),  # ≈0.85M
        ("squeezenext", 10, 32, 474_698),
        ("squeezenext", 1000, 224, 610_088),
        ("c1", 10, 32, 1_756_682),
        ("c2", 10, 32, 1_148_746),
        ("alexnet", 10, 32, 1_756_554),
    ],
)
def test_parameter_counts_exact(name: str, num_classes: int, image_size: int, expected: int) -> None:
    assert num_params(build_model(name, num_classes, image_size)) == expected


@pytest.mark.parametrize(
    ("name", "num_classes", "image_size", "low", "high"),
    [
        ("resnet20", 10, 32, 0.26e6, 0.28e6),
        ("resnet56", 10, 32, 0.84e6, 0.87e6),
        ("squeezenext", 10, 32, 0.4e6, 0.8e6),  # same order as the paper's ≈0.7M minus the 1000-way FC
        ("squeezenext", 1000, 224, 0.5e6, 0.8e6),
    ],
)
def test_parameter_counts_match_papers(name: str, num_classes: int, image_size: int, low: float, high: float) -> None:
    assert low <= num_params(build_model(name, num_classes, image_size)) <= high


def test_squeezenext_width_multiplier_grows_model() -> None:
    base = num_params(build_model("squeezenext", 10, 32, width=1.0))
    wide = num_params(build_model("squeezenext", 10, 32, width=2.0))
    # Conv weights scale with width², so 2.0-SqNxt-23 is roughly 4× larger (minus the fixed-size FC).
    assert 3 * base < wide < 4.5 * base
    logits = build_model("squeezenext", 10, 32, width=2.0)(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)


def test_small_net_width_multiplier() -> None:
    for name in ("c1", "c2", "alexnet", "resnet20"):
        assert num_params(build_model(name, 10, 32, width=0.5)) < num_params(build_model(name, 10, 32))


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown model 'vgg16'.*resnet20.*squeezenext"):
        build_model("vgg16", 10, 32)


def test_bad_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError, match="width"):
        build_model("resnet18", 10, 32, width=2.0)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("c1", 0, 32)
    with pytest.raises(ValueError, match="too small"):
        build_model("c2", 10, 14)


def test_resnet18_stem_depends_on_image_size() -> None:
    small = build_model("resnet18", 10, 32)
    large = build_model("resnet18", 10, 224)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    assert large.conv1.kernel_size == (7, 7) and large.conv1.stride == (2, 2)
    assert isinstance(large.maxpool, nn.MaxPool2d)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_seeded_builds_are_identical(name: str) -> None:
    torch.manual_seed(0)
    first = build_model(name, 10, 32).state_dict()
    torch.manual_seed(0)
    second = build_model(name, 10, 32).state_dict()
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), f"{name}: {key} differs between seeded builds"


def test_models_package_does_not_import_ray() -> None:
    # Layer 1 must stay importable in a worker without Ray; checked on the source, without importing anything.
    for path in Path(models_pkg.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not any(n == "ray" or n.startswith("ray.") for n in names), f"{path.name} imports {names}"
