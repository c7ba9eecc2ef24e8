"""Shell completion (`absa --install-completion` installs it): commands, preset names and run ids complete,
through the same protocol bash uses (`_ABSA_COMPLETE=complete_bash`, `COMP_WORDS`, `COMP_CWORD`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def _complete(words: str, **env: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", "from absa_cli.cli.app import app; app(prog_name='absa')"],
        env={**os.environ, "_ABSA_COMPLETE": "complete_bash", "COMP_WORDS": words,
             "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)), **env},
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@pytest.mark.parametrize("words, expected", [
    ("absa train qu", ["quickstart"]),
    ("absa presets show resnet20", ["resnet20-cifar10", "resnet20-cifar100"]),
    ("absa plan resnet18-i", ["resnet18-imagenet"]),
    ("absa hessian x.pt --preset c", ["c1-cifar10", "c2-cifar10"]),
    ("absa re", ["resume"]),
])
def test_commands_and_preset_names_complete(words, expected):
    assert _complete(words) == expected


def test_run_ids_complete_from_the_runs_directory(tmp_path):
    for run_id in ("quickstart-20261127-000000-aaaa", "quickstart-20261127-000001-bbbb", "other-run"):
        (tmp_path / run_id).mkdir()
        (tmp_path / run_id / "run.json").write_text(json.dumps({"started_at": run_id}))
    expected = ["quickstart-20261127-000000-aaaa", "quickstart-20261127-000001-bbbb"]
    for command in ("absa resume quick", "absa runs show quick", "absa plot quick"):
        assert _complete(command, ABSA_RUNS_DIR=str(tmp_path)) == expected, command


def test_install_completion_is_offered():
    result = subprocess.run([sys.executable, "-m", "absa_cli", "--help"], capture_output=True, text=True, timeout=60)
    assert "--install-completion" in result.stdout
