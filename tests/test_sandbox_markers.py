"""The test harness itself: a ``@pytest.mark.sandbox`` with a misspelt scenario name stops the session at
collection, naming the test and the scenarios there are (it was a KeyError in every sandbox test, since the
scenarios a session selected are started together)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _collect(tmp_path: Path, marker: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_marked.py").write_text(f"import pytest\n\n\n@pytest.mark.sandbox({marker})\n"
                                             f"def test_marked():\n    pass\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "conftest", "-p",
                           "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)


def test_a_misspelt_sandbox_scenario_stops_collection_naming_it(tmp_path):
    typo = _collect(tmp_path, '"placment"')
    assert typo.returncode == 4, typo.stdout + typo.stderr  # pytest's usage error
    said = typo.stdout + typo.stderr
    assert "test_marked.py::test_marked: @pytest.mark.sandbox('placment') names no scenario" in said, said
    assert "use one of autoscaling, node_added_then_lost, placement" in said, said
    assert "KeyError" not in said


def test_a_known_sandbox_scenario_collects(tmp_path):
    known = _collect(tmp_path, '"placement"')
    assert known.returncode == 0 and "1 test collected" in known.stdout, known.stdout + known.stderr
