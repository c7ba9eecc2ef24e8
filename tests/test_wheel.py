"""Packaging: the wheel carries every package and the presets, and `absa presets list` runs from it.

The wheel is built from this checkout and installed into a throwaway target directory; the command then runs with
no site-packages path configuration (`python -S`), so neither the source tree nor an editable install can leak in.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT),
                    "-w", str(out)], check=True, capture_output=True)
    (built,) = out.glob("absa_train-*.whl")
    return built


def test_wheel_holds_every_package_and_preset(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "absa_cli").rglob("__init__.py")}
    for package in packages:
        assert f"{package}/__init__.py" in names, f"{package} is missing from pyproject's package list"
    presets = {p.name for p in (ROOT / "presets").glob("*.yaml")}
    assert presets and {f"absa_cli/presets/{name}" for name in presets} <= names


def test_presets_list_runs_from_the_installed_wheel(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    dependencies = sysconfig.get_paths()["purelib"]  # typer, rich, omegaconf from the test environment
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), dependencies])}
    code = "import absa_cli, sys; print(absa_cli.__file__, file=sys.stderr); from absa_cli.cli.app import main; main()"
    done = subprocess.run([sys.executable, "-S", "-c", code, "presets", "list"], env=env, cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().startswith(str(target))  # imported from the wheel, not the checkout
    assert "quickstart" in done.stdout and "resnet18-imagenet" in done.stdout
