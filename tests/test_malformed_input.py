"""Every command, given malformed input, answers as the CLI promises (README, docs/reliability.md): exit code 2,
exactly one line on stderr starting with ``error:`` that names the problem, no traceback, and nothing left behind
(no run directory, no file, no process). At least three malformed inputs per command: usage errors Typer catches
(a missing argument, an option out of range, an unknown option) and errors absa finds itself (bad names, bad
values, contradictory options, unusable paths)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from absa_cli.cli.app import app
from absa_cli.cluster import reaper

from conftest import absa_stderr_lines

runner = CliRunner()

# {tmp}: the test's empty working directory; {file}: a regular file in it
CASES = {
    "train": [
        [],
        ["no-such-preset"],
        ["quickstart", "epochs=ten"],
        ["quickstart", "--max-gpus", "0"],
        ["quickstart", "optim.decay_epochs=[8,"],
        ["quickstart", "epochs=!!python/object/apply:os.system"],
        ["quickstart", "--local", "--address", "127.0.0.1:1"],
        ["quickstart", "--runs-dir", "{file}"],
        ["quickstart", "--runs-dir", "{file}/runs"],
    ],
    "resume": [
        [],
        ["../escape"],
        ["no-such-run"],
        ["no-such-run", "--max-gpus", "-1"],
        ["no-such-run", "--local", "--address", "127.0.0.1:1"],
    ],
    "plan": [
        [],
        ["no-such-preset"],
        ["quickstart", "policy.growht=2"],
        ["quickstart", "--profile", "{tmp}/missing.json"],
        ["quickstart", "--max-gpus", "zero"],
    ],
    "calibrate": [
        [],
        ["quickstart", "--from-run", "some-run"],
        ["quickstart", "-o", "{tmp}/missing/q.json"],
        ["--from-run", "some-run", "--local"],
        ["quickstart", "--local", "--address", "127.0.0.1:1"],
    ],
    "hessian": [
        [],
        ["{tmp}/missing.pt"],
        ["{tmp}"],
        ["{tmp}/missing.pt", "--method", "power", "--top-k", "2"],
        ["{tmp}/missing.pt", "--top-k", "0"],
        ["{tmp}/missing.pt", "--plot", "{tmp}/density.txt"],
        ["{tmp}/missing.pt", "--plot", "{tmp}/missing/density.png"],
        ["{tmp}/missing.pt", "--address", "127.0.0.1:1"],
    ],
    "plot": [
        [],
        ["no-such-run"],
        ["../escape"],
        ["no-such-run", "--x", "sideways"],
    ],
    "presets list": [
        ["extra"],
        ["--bogus"],
        ["--runs-dir", "{tmp}"],
    ],
    "presets show": [
        [],
        ["no-such-preset"],
        ["quickstart", "epochs=ten"],
    ],
    "runs list": [
        ["extra"],
        ["--bogus"],
        ["--runs-dir", "{file}"],
        ["--runs-dir", "{tmp}/missing"],
    ],
    "runs show": [
        [],
        ["../escape"],
        ["no-such-run"],
    ],
    "": [
        ["no-such-command"],
        ["--bogus"],
        ["train", "--max-gpus"],
    ],
}


def _cases():
    for command, inputs in CASES.items():
        for args in inputs:
            yield pytest.param(command, args, id=f"{command or 'absa'}: {' '.join(args) or '(nothing)'}")


def test_every_command_has_at_least_three_malformed_inputs():
    commands = {"train", "resume", "plan", "calibrate", "hessian", "plot", "presets list", "presets show",
                "runs list", "runs show"}
    assert commands <= set(CASES)
    for command in commands:
        assert len(CASES[command]) >= 3, command


@pytest.mark.parametrize(("command", "args"), list(_cases()))
def test_malformed_input_is_one_error_line_exit_2_and_leaves_nothing(command, args, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "a-file").write_text("not a directory\n")
    monkeypatch.chdir(work)
    monkeypatch.delenv("ABSA_RUNS_DIR", raising=False)
    argv = command.split() + [a.format(tmp=work, file=work / "a-file") for a in args]
    before = sorted(work.rglob("*"))
    children = set(reaper.descendants({os.getpid()}, reaper._processes()))

    result = runner.invoke(app, argv)

    assert result.exit_code == 2, (argv, result.output)
    assert "Traceback" not in result.output, result.output
    lines = absa_stderr_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), (argv, result.stderr)
    assert sorted(work.rglob("*")) == before, f"{argv} left {set(work.rglob('*')) - set(before)}"
    assert not Path(work / "runs").exists()
    started = set(reaper.descendants({os.getpid()}, reaper._processes())) - children
    assert not started, f"{argv} left processes behind: {started}"
