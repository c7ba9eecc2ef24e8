"""Imports point downward only (docs/architecture.md): checked on the source with `ast`, no imports executed."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "absa_cli"

LAYER_0 = {"errors", "catalog", "config", "geometry", "schedule", "metrics", "policy", "lock"}
LAYER_1 = {"data", "models", "curvature", "dist", "engine", "checkpoint", "adversarial", "hessian", "tensorboard",
           "accel"}
LAYER_2 = {"controller", "local_group", "cluster"}
HEAVY = {"torch", "torchvision", "ray", "numpy", "scipy", "PIL"}


def _module_of(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    """Top-level names imported anywhere in the file: third-party roots and absa_cli's own modules."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            names.add(parts[1] if parts[0] == "absa_cli" and len(parts) > 1 else parts[0])
    return names


def _files(modules: set[str]) -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if _module_of(p) in modules]


def test_layer_0_is_pure():
    for path in _files(LAYER_0):
        bad = _imports(path) & (HEAVY | LAYER_1 | LAYER_2 | {"runs", "cli"})
        assert not bad, f"{path.name} (layer 0) imports {bad}"


def test_layer_1_never_imports_ray_or_upper_layers():
    for path in _files(LAYER_1):
        bad = _imports(path) & ({"ray"} | LAYER_2 | {"runs", "cli"})
        assert not bad, f"{path.relative_to(PACKAGE)} (layer 1) imports {bad}"


def test_only_cluster_imports_ray():
    for path in PACKAGE.rglob("*.py"):
        if _module_of(path) != "cluster":
            assert "ray" not in _imports(path), f"{path.relative_to(PACKAGE)} imports ray"


def test_cli_modules_import_nothing_heavy_at_module_level():
    for path in (PACKAGE / "cli").glob("*.py"):
        tree = ast.parse(path.read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = {alias.name.split(".")[0] for n in top for alias in n.names if isinstance(n, ast.Import)}
        names |= {n.module.split(".")[0] for n in top if isinstance(n, ast.ImportFrom) and n.module}
        from_absa = {n.module for n in top if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("absa_cli")}
        assert not names & HEAVY, f"cli/{path.name} imports {names & HEAVY} at module level"
        heavy_absa = {m for m in from_absa if m.count(".") and m.split(".")[1] in LAYER_1 | LAYER_2}
        assert not heavy_absa, f"cli/{path.name} imports {heavy_absa} at module level"
