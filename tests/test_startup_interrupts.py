"""Ctrl-C while absa loads its libraries is held until they are loaded, then handled: one line, exit code 130.

Raised in the middle of an import, a KeyboardInterrupt left half-initialised modules behind (a SIGINT during
scipy's import once ended `absa train` with a RecursionError and a thousand-line traceback), and raised while an
extension ran Python code through ``PyRun_*`` (importing torch does) it made CPython end a ``python -m absa_cli``
process by SIGINT (status −2) after absa had printed its line and asked for 130."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from absa_cli.cli.common import HELD, HELD_FOR_RAY, held_interrupt

from conftest import TINY, as_a_terminal_starts

REPO = Path(__file__).resolve().parent.parent


def test_a_ctrl_c_inside_the_block_is_delivered_when_it_ends(sigint_as_in_a_terminal):
    steps = []
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with held_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
            steps.append("the block ran on")
    assert steps == ["the block ran on"]
    assert signal.getsignal(signal.SIGINT) is before
    with held_interrupt():  # nothing pressed: nothing raised
        steps.append("quiet")
    assert signal.getsignal(signal.SIGINT) is before


def test_a_held_ctrl_c_goes_to_the_handler_there_was_before(sigint_as_in_a_terminal, capfd):
    seen = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        with held_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
            assert seen == []
        assert seen == [signal.SIGINT]
        assert capfd.readouterr().err == HELD.decode()  # the hold said so, once
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with held_interrupt():  # ignored before (a background job): ignored throughout, even pressed twice
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        assert capfd.readouterr().err == ""  # nothing held, so nothing said
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_ctrl_c_in_a_block_that_fails_is_still_delivered(sigint_as_in_a_terminal):
    with pytest.raises(KeyboardInterrupt) as caught:
        with held_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
            raise ImportError("a library failed to load")
    assert isinstance(caught.value.__context__, ImportError)


def test_a_handler_set_from_c_is_left_alone(monkeypatch):
    """``signal.getsignal`` says None for a handler Python did not set: it could not be put back, so nothing is held."""
    monkeypatch.setattr(signal, "getsignal", lambda signum: None)
    monkeypatch.setattr(signal, "signal", lambda *args: pytest.fail("the handler was replaced"))
    with held_interrupt():
        ran = True
    assert ran


_TWICE = """
import os, signal, sys, time
from absa_cli.cli.common import held_interrupt, interrupted
with interrupted("the enclosing block's line"):
    def on_quit():
        print("on_quit ran", file=sys.stderr, flush=True)
        if FAIL:
            raise OSError("the lock's folder went read-only")

    with held_interrupt(on_quit=on_quit):
        os.kill(os.getpid(), signal.SIGINT)
        print("held, the block runs on", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(30)
print("not reached", file=sys.stderr)
"""


@pytest.mark.parametrize("fail", [False, True])
def test_a_second_ctrl_c_during_the_hold_quits_at_once_with_the_enclosing_line(tmp_path, fail):
    """The first press is held (and says so), the second ends the process: ``on_quit`` (even one that fails), then
    the line of the ``interrupted`` block around it, exit code 130 (not after the 30 s the block would still take)."""
    (tmp_path / "twice.py").write_text(f"FAIL = {fail}\n" + _TWICE)
    result = subprocess.run(as_a_terminal_starts([sys.executable, str(tmp_path / "twice.py")]),
                            env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=20)
    assert result.returncode == 130, result.stderr
    assert result.stderr.splitlines() == [HELD.decode().strip(), "held, the block runs on", "on_quit ran",
                                          "the enclosing block's line"]


_PYRUN = """
import ctypes, sys
from absa_cli.cli.common import HELD, held_interrupt
HOLD = {hold}
code = b"import os, signal\\nos.kill(os.getpid(), signal.SIGINT)\\nfor _ in range(10**5): pass\\n"
try:
    if HOLD:
        with held_interrupt():
            ctypes.pythonapi.PyRun_SimpleString(code)  # Python code run by C, as torch's import does
    else:
        ctypes.pythonapi.PyRun_SimpleString(code)
except KeyboardInterrupt:
    pass
sys.exit(130)  # handled: what absa's `interrupted` asks for
"""


@pytest.mark.parametrize("hold", [False, True])
def test_a_handled_ctrl_c_exits_130_under_python_m_only_when_held(tmp_path, hold):
    """Without the hold, CPython remembers a KeyboardInterrupt that passed through PyRun_* and, for `python -m`,
    ends the process by SIGINT at exit whatever the code asked for (the control: −2 on this interpreter)."""
    (tmp_path / "pyrun_probe.py").write_text(_PYRUN.format(hold=hold))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    result = subprocess.run(as_a_terminal_starts([sys.executable, "-m", "pyrun_probe"]), env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == (130 if hold else -signal.SIGINT), result.stderr


_TRAIN = """
import atexit, os, runpy, signal, sys

class CtrlCAsTorchLoads:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            for _ in range(int(os.environ["PRESSES"])):
                os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, CtrlCAsTorchLoads())
atexit.register(lambda: print("torch loaded:", hasattr(sys.modules.get("torch"), "Tensor"), file=sys.stderr))
sys.argv = ["absa", *sys.argv[1:]]
runpy.run_module("absa_cli", run_name="__main__")
"""


def test_ctrl_c_as_torch_starts_loading_lets_it_load_then_stops_absa_train_in_one_line(tmp_path):
    (tmp_path / "ctrl_c_train.py").write_text(textwrap.dedent(_TRAIN))
    command = [sys.executable, str(tmp_path / "ctrl_c_train.py"), "train", "quickstart", *TINY, "--local",
               "--runs-dir", str(tmp_path / "runs")]
    result = subprocess.run(as_a_terminal_starts(command), env={**os.environ, "PYTHONPATH": str(REPO), "PRESSES": "1"},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 130, result.stderr
    assert result.stderr.splitlines() == [HELD.decode().strip(), "interrupted before training started; nothing to save",
                                          "torch loaded: True"]  # held: the import finished first
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


_RUN = """
import sys
from pathlib import Path
from absa_cli import config
from absa_cli.run.rundir import RunDir
print(RunDir.create(Path(sys.argv[1]), config.load("quickstart", sys.argv[2:])).id)
"""


def test_two_ctrl_c_as_torch_starts_loading_quit_absa_resume_at_once_and_free_the_run(tmp_path):
    """`absa resume` holds the run's lock while it loads torch: a second press quits there and then (torch never
    loads: no exit handler runs), releasing the lock, so the run can be resumed at once; nothing of it changed."""
    (tmp_path / "ctrl_c_train.py").write_text(textwrap.dedent(_TRAIN))
    (tmp_path / "make_run.py").write_text(_RUN)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runs = tmp_path / "runs"
    made = subprocess.run([sys.executable, str(tmp_path / "make_run.py"), str(runs), *TINY], env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    run = runs / made.stdout.strip()
    before = (run / "run.json").read_text()
    command = [sys.executable, str(tmp_path / "ctrl_c_train.py"), "resume", run.name, "--local",
               "--runs-dir", str(runs)]
    result = subprocess.run(as_a_terminal_starts(command), env={**env, "PRESSES": "2"}, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 130, result.stderr
    assert result.stderr.splitlines() == [HELD.decode().strip(), "interrupted before training started; nothing to save"]
    assert not (run / "lock.json").exists()
    assert (run / "run.json").read_text() == before


_RAY = """
import os, runpy, signal, sys
import ray

real_init = ray.init

def init(*args, **kwargs):  # Ctrl-C as Ray starts: it once landed inside Ray's core worker, half built
    for _ in range(int(os.environ["PRESSES"])):
        os.kill(os.getpid(), signal.SIGINT)
    started = real_init(*args, **kwargs)
    print("ray started", file=sys.stderr, flush=True)
    return started

ray.init = init
sys.argv = ["absa", *sys.argv[1:]]
runpy.run_module("absa_cli", run_name="__main__")
"""


@pytest.mark.slow
def test_ctrl_c_as_ray_starts_lets_it_start_then_stops_absa_train_in_one_line(tmp_path):
    """Raised while Ray built its core worker, a KeyboardInterrupt left one whose threads Ray's exit hook crashed
    on: exit code 139 (a segmentation fault) instead of 130 in about one Ctrl-C in three during a local cluster's
    start. Held, Ray starts whole and then stops as after any Ctrl-C."""
    (tmp_path / "ctrl_c_ray.py").write_text(_RAY)
    command = [sys.executable, str(tmp_path / "ctrl_c_ray.py"), "train", "quickstart", *TINY,
               "--runs-dir", str(tmp_path / "runs")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PRESSES": "1", "ABSA_PRIVATE_NETWORK": "off"}
    result = subprocess.run(as_a_terminal_starts(command), env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 130, result.stderr
    lines = result.stderr.splitlines()
    assert lines[:1] == [HELD_FOR_RAY.decode().strip()], result.stderr
    assert lines.index("ray started") < lines.index("interrupted before training started; nothing to save")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_two_ctrl_c_as_ray_starts_quit_absa_resume_at_once_and_free_the_run(tmp_path):
    """The second press quits before Ray is asked to start, releasing the run's lock; nothing of the run changed."""
    (tmp_path / "ctrl_c_ray.py").write_text(_RAY)
    (tmp_path / "make_run.py").write_text(_RUN)
    env = {**os.environ, "PYTHONPATH": str(REPO), "ABSA_PRIVATE_NETWORK": "off"}
    runs = tmp_path / "runs"
    made = subprocess.run([sys.executable, str(tmp_path / "make_run.py"), str(runs), *TINY], env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    run = runs / made.stdout.strip()
    before = (run / "run.json").read_text()
    command = [sys.executable, str(tmp_path / "ctrl_c_ray.py"), "resume", run.name, "--runs-dir", str(runs)]
    result = subprocess.run(as_a_terminal_starts(command), env={**env, "PRESSES": "2"}, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 130, result.stderr
    assert result.stderr.splitlines() == [HELD_FOR_RAY.decode().strip(),
                                          "interrupted before training started; nothing to save"]
    assert not (run / "lock.json").exists()
    assert (run / "run.json").read_text() == before
