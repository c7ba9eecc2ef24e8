"""The docs cannot rot: every command in a ```bash or ```console block of README.md and docs/*.md runs here
(once, however many docs show it).

Commands run in a sandbox directory holding `runs/` with real finished runs (placeholders such as `<run-id>` are
replaced by their ids), against the session's Ray cluster (`RAY_ADDRESS`). `absa train` of a preset whose data is
here (`shapes`) runs with its documented arguments plus overrides that shrink it to one small epoch; a preset whose
dataset is not on this machine must fail in one `error:` line with exit code 2. In ```console blocks the lines
after `$ command` are output that must appear. The few commands that cannot run here are listed in NOT_RUN with
the reason and the test that covers them instead; an entry no doc uses any more fails the test.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from absa_cli import config as config_mod

from conftest import TINY

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHRINK = ["epochs=1", "data.train_size=256", "policy.max_global_batch=256", "data.test_size=64", "probe.max_iter=5",
          "probe.batch_size=32"]

NOT_RUN = {
    "make demo": "is `absa train quickstart` after installing: run whole by tests/test_quickstart.py",
    "make test": "is this test suite",
    "ray start": "starts a machine-wide Ray head; `--address` is exercised against the session cluster instead",
    "ray up": "launches cloud machines; tests/test_multinode.py runs Ray's simulated autoscaling cluster instead",
    "ray stop": "would stop every Ray process on the machine, the test session's cluster included",
    "ray job submit": "needs a head with its dashboard: tests/test_jobs.py starts one and submits a run to it",
    "absa train resnet18-imagenet --max-gpus 64 --submit": "needs a head with its dashboard and ImageNet: "
                                                           "tests/test_jobs.py submits a quickstart run to one",
    "tensorboard --logdir": "starts a web server; tests/test_tensorboard.py reads the event files back",
}


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(where, command, expected output lines) for every command in a bash/console block."""
    found = []
    for doc in DOCS:
        lang, block = None, []
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            if line.startswith("```"):
                if lang is None:
                    lang, block = line[3:].strip(), []
                else:
                    found += _commands(f"{doc.relative_to(ROOT)}:{number}", lang, block)
                    lang = None
            elif lang is not None:
                block.append(line)
    return found


def _commands(where: str, lang: str, lines: list[str]) -> list[tuple[str, str, list[str]]]:
    if lang in ("bash", "sh"):
        commands = [re.sub(r"\s+#.*$", "", line).strip() for line in lines]
        return [(where, command, []) for command in commands if command and not command.startswith("#")]
    if lang == "console":
        out: list[tuple[str, str, list[str]]] = []
        for line in lines:
            if line.startswith("$ "):
                out.append((where, line[2:].strip(), []))
            elif out and line.strip():
                out[-1][2].append(line.strip())
        return out
    return []


def distinct_commands() -> list[tuple[str, str, list[str]]]:
    """Each command once (``.venv/bin/absa`` is ``absa``), with every place that documents it and the output lines
    any of them expects: the README repeats commands the docs explain, and a command runs in seconds to minutes."""
    merged: dict[str, tuple[list[str], str, list[str]]] = {}
    for where, command, expected in documented_commands():
        wheres, _, lines = merged.setdefault(command.removeprefix(".venv/bin/"), ([], command, []))
        wheres.append(where)
        lines += [line for line in expected if line not in lines]
    return [(", ".join(wheres), command, lines) for wheres, command, lines in merged.values()]


def _skip_reason(command: str) -> str | None:
    return next((reason for prefix, reason in NOT_RUN.items() if command.startswith(prefix)), None)


def test_each_documented_command_and_its_output_is_checked_by_one_distinct_run():
    distinct = {command.removeprefix(".venv/bin/"): (wheres, lines) for wheres, command, lines in distinct_commands()}
    assert len(distinct) == len(distinct_commands())  # no command runs twice
    for where, command, expected in documented_commands():
        wheres, lines = distinct[command.removeprefix(".venv/bin/")]
        assert where in wheres.split(", ") and set(expected) <= set(lines), (where, command)


def test_not_run_entries_are_still_used():
    commands = [command for _, command, _ in documented_commands()]
    for prefix in NOT_RUN:
        assert any(c.startswith(prefix) for c in commands), f"NOT_RUN has {prefix!r}, which no doc uses any more"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, ray_cluster):
    """A working directory with runs/: A (absa, 10 epochs), B (fixed), C (A interrupted after epoch 9)."""
    import io

    from absa_cli.run.checkpoint import CheckpointStore
    from absa_cli.driver.controller import Controller
    from absa_cli.driver.local_group import LocalGroup
    from absa_cli.run.metrics import Console
    from absa_cli.run.rundir import RunDir

    home = tmp_path_factory.mktemp("docs")
    ids = {}
    import torch

    torch.set_num_threads(1)  # tiny tensors: a second thread only spins
    # A narrow model on 128 samples: the documented `absa hessian` options (50 trace samples, a density) stay cheap.
    tiny = [*TINY, "epochs=10", "checkpoint.keep_last=10", "data.train_size=128", "policy.max_global_batch=128",
            "model.width=0.125", "probe.max_iter=5"]
    for name, extra in (("A", []), ("B", ["policy.name=fixed"])):
        config = config_mod.load("quickstart", [*tiny, *extra])
        run = RunDir.create(home / "runs", config)
        Controller(config, run, LocalGroup(config), Console(io.StringIO(), force_plain=True)).run_all()
        run.finish("finished")
        ids[name] = run.id
    source = home / "runs" / ids["A"]
    interrupted = RunDir(shutil.copytree(source, home / "runs" / f"{ids['A']}-interrupted"))
    interrupted.write_info(status="interrupted")
    store = CheckpointStore(interrupted.checkpoints_dir)
    kept = store.entries()[:-1]
    (interrupted.checkpoints_dir / "epoch-0010.pt").unlink()
    store.manifest_path.write_text(json.dumps({"format_version": 1, "checkpoints": [e.__dict__ for e in kept]}))
    ids["C"] = interrupted.id
    (home / "some").mkdir()  # a checkpoint outside a run directory, of the quickstart preset's own model
    from absa_cli.run import checkpoint
    from absa_cli.worker.engine import Engine

    checkpoint.save(home / "some" / "bare.pt", Engine(config_mod.load("quickstart", [])).state_dict())
    (home / "data").mkdir()
    return home, ids, ray_cluster


def _prepare(command: str, ids: dict[str, str], address: str) -> tuple[list[str], int]:
    """argv to run and the exit code it must give; a documented `--address HOST:PORT` becomes the session's."""
    run_id = ids["C"] if command.startswith(("absa resume", ".venv/bin/absa resume")) else ids["A"]
    for placeholder, value in (("<run-id>", run_id), ("<other-run-id>", ids["B"])):
        command = command.replace(placeholder, value)
    argv = shlex.split(command.replace("benchmarks/profiles/", f"{ROOT}/benchmarks/profiles/"))
    argv = [address if previous == "--address" else arg for previous, arg in zip(["", *argv], argv)]
    if argv[0] in ("absa", ".venv/bin/absa"):
        argv = [sys.executable, "-m", "absa_cli", *argv[1:]]
    else:
        return argv, 0
    if argv[3:4] == ["calibrate"] and "--from-run" not in argv:
        return argv + SHRINK, 0  # a few steps on a small set: the same command, seconds instead of a minute
    if argv[3:4] == ["train"]:
        preset = argv[4]
        if config_mod.load(preset, []).data.name != "shapes":
            return argv, 2  # its dataset is not on this machine: one clear line, exit code 2
        if not any(arg.startswith("error") for arg in argv):
            argv += SHRINK
    return argv, 0


@pytest.mark.slow
@pytest.mark.parametrize("where, command, expected", distinct_commands(),
                         ids=[f"{w.split(', ')[0]}:{c[:40]}" for w, c, _ in distinct_commands()])
def test_documented_command_runs(sandbox, where, command, expected):
    reason = _skip_reason(command)
    if reason:
        pytest.skip(f"not run here: {reason}")
    home, ids, address = sandbox
    argv, code = _prepare(command, ids, address)
    if any(line.startswith("error:") for line in expected):
        code = 2
    env = {**os.environ, "RAY_ADDRESS": address, "ABSA_DATA": str(home / "data")}
    env.pop("ABSA_RUNS_DIR", None)
    result = subprocess.run(argv, cwd=home, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == code, f"{where}: `{command}` exited {result.returncode}\n{output[-3000:]}"
    if code == 2:
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in output, output[-2000:]
    for line in expected:
        assert line in output, f"{where}: expected {line!r} in the output of `{command}`\n{output[-2000:]}"
