"""Imports point downward only (docs/architecture.md), in every layer, read from the folders: each folder (or
top-level module) of absa_cli is one layer, and a file may import absa_cli code of its own layer or below. Checked
on the source with `ast`, no imports executed. A new folder must be given a layer here, or the test fails."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "absa_cli"

# lowest first; each entry is a folder of absa_cli or a top-level module (without .py)
LAYERS = [
    {"__init__", "errors", "catalog", "config"},  # the base: what a config is, and what exists
    {"decide"},  # pure decisions: geometry, LR schedule, policies, membership
    {"dist", "curvature", "data", "models"},  # torch building blocks
    {"worker"},  # one worker process: step, evaluation, probe, FGSM, accelerator
    {"run"},  # a run's files: run dirs, lock, checkpoints, records, console, TensorBoard, plots
    {"driver"},  # the epoch loop, the worker-group contract, the in-process group, outcomes
    {"cluster"},  # Ray: the actor, the group, the connection, the private network
    {"cli", "__main__"},  # one module per command
]
LAYER = {unit: number for number, units in enumerate(LAYERS) for unit in units}
HEAVY = {"torch", "torchvision", "ray", "numpy", "scipy", "PIL", "matplotlib"}


def _unit(path: Path) -> str:
    """The folder or top-level module a file of absa_cli belongs to."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imports(path: Path, text: str | None = None) -> tuple[set[str], set[str]]:
    """(absa_cli units imported, third-party roots imported) anywhere in the file at ``path`` (whose source is
    ``text`` when given), relative imports resolved against its package."""
    units: set[str] = set()
    outside: set[str] = set()
    package = path.relative_to(PACKAGE).parent.parts
    for node in ast.walk(ast.parse(path.read_text() if text is None else text)):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x, from ..run import y: inside absa_cli
                base = package[:len(package) - node.level + 1]
                target = [*base, *node.module.split(".")] if node.module else [*base, node.names[0].name]
                units.add(target[0] if target else "__init__")
                continue
            modules = [f"absa_cli.{alias.name}" if alias.name in LAYER else "absa_cli" for alias in node.names] \
                if node.module == "absa_cli" else [node.module]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            if parts[0] == "absa_cli":
                units.add(parts[1] if len(parts) > 1 else "__init__")
            else:
                outside.add(parts[0])
    return units, outside


def _files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_folder_and_module_has_a_layer():
    assert {_unit(path) for path in _files()} <= set(LAYER), "give the new folder a layer in LAYERS"


def test_imports_point_downward_in_every_layer():
    upward = []
    for path in _files():
        own = LAYER[_unit(path)]
        units, _ = _imports(path)
        for unit in units - {_unit(path)}:
            if LAYER[unit] > own:
                upward.append(f"{path.relative_to(PACKAGE)} (layer {own}) imports {unit} (layer {LAYER[unit]})")
    assert not upward, "\n".join(upward)


def test_the_checker_sees_upward_imports_of_every_form():
    """What the test above looks for, shown on a file of decide/ (layer 1) that imports upward three ways."""
    text = "from absa_cli.driver.controller import Controller\nfrom ..run import lock\nimport absa_cli.worker.engine\n"
    units, _ = _imports(PACKAGE / "decide" / "example.py", text)
    assert units == {"driver", "run", "worker"} and all(LAYER[u] > LAYER["decide"] for u in units)
    assert _imports(PACKAGE / "decide" / "example.py", "from . import geometry\n")[0] == {"decide"}


def test_the_base_and_decisions_import_nothing_heavy():
    for path in _files():
        if LAYER[_unit(path)] <= LAYER["decide"]:
            heavy = _imports(path)[1] & HEAVY
            assert not heavy, f"{path.relative_to(PACKAGE)} imports {heavy}"


def test_only_cluster_imports_ray():
    for path in _files():
        if _unit(path) != "cluster":
            assert "ray" not in _imports(path)[1], f"{path.relative_to(PACKAGE)} imports ray"


def test_cli_modules_import_nothing_heavy_at_module_level():
    for path in (PACKAGE / "cli").glob("*.py"):
        tree = ast.parse(path.read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = {alias.name.split(".")[0] for n in top for alias in n.names if isinstance(n, ast.Import)}
        names |= {n.module.split(".")[0] for n in top if isinstance(n, ast.ImportFrom) and n.module}
        from_absa = {n.module for n in top if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("absa_cli")}
        from_absa |= {alias.name for n in top if isinstance(n, ast.Import) for alias in n.names
                      if alias.name.startswith("absa_cli.")}
        assert not names & HEAVY, f"cli/{path.name} imports {names & HEAVY} at module level"
        light = LAYERS[0] | {"decide", "run", "cli"}  # none of these imports torch or ray at module level
        heavy_absa = {m for m in from_absa if m.count(".") and m.split(".")[1] not in light}
        assert not heavy_absa, f"cli/{path.name} imports {heavy_absa} at module level"


def test_the_training_core_reads_in_one_sitting():
    """Each module of the training core (decide/, worker/, driver/) at most 300 lines; `drive` at most 30."""
    for folder in ("decide", "worker", "driver"):
        for path in (PACKAGE / folder).glob("*.py"):
            lines = len(path.read_text().splitlines())
            assert lines <= 300, f"{path.relative_to(PACKAGE)} has {lines} lines"
    tree = ast.parse((PACKAGE / "cli" / "driver.py").read_text())
    (drive,) = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "drive"]
    assert drive.end_lineno - drive.lineno + 1 <= 30


def test_lines_fit_a_120_column_window():
    """Every line of absa_cli at most 120 characters (docs/architecture.md), so that a diff or a
    review reads without wrapping."""
    long = [f"{path.relative_to(PACKAGE)}:{number} ({len(line)})" for path in sorted(PACKAGE.rglob("*.py"))
            for number, line in enumerate(path.read_text().splitlines(), 1) if len(line) > 120]
    assert not long, f"lines over 120 characters: {', '.join(long)}"
