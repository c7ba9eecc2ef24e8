"""Signals to the driver (a real `absa train --local` process): SIGTERM stops after the step in progress with a
checkpoint and exit code 143; a second SIGINT aborts at once with 130 and the last checkpoint still stands."""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from absa_cli.run import checkpoint
from absa_cli.run.rundir import RunDir

from conftest import TINY, as_a_terminal_starts

# Two epochs of 32 steps: plenty of time to signal mid-epoch.
RUN = [*TINY, "epochs=2", "data.train_size=2048", "logging.chunk_steps=1"]


def _start(tmp_path, *extra: str, mark: str = "step 3/32", terminal: bool = True,
           **popen) -> tuple[subprocess.Popen, list[str]]:
    """``absa train`` started as a terminal starts it (SIGINT handled, whatever this suite's own state), unless
    ``terminal`` is False."""
    command = [sys.executable, "-m", "absa_cli", "train", "quickstart", *RUN, *extra, "--local", "--runs-dir",
               str(tmp_path)]
    process = subprocess.Popen(as_a_terminal_starts(command) if terminal else command, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, **popen)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(line.rstrip("\n") for line in process.stdout), daemon=True).start()
    _wait_for(process, lines, mark)  # mid-epoch 1
    return process, lines


def _wait_for(process, lines: list[str], text: str) -> None:
    deadline = time.monotonic() + 120
    while not any(text in line for line in lines):
        assert process.poll() is None and time.monotonic() < deadline, "\n".join(lines)
        time.sleep(0.01)


def _run(tmp_path) -> RunDir:
    (path,) = tmp_path.iterdir()
    return RunDir(path)


def test_sigterm_stops_after_the_step_with_a_checkpoint_and_exit_143(tmp_path):
    process, lines = _start(tmp_path)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143
    time.sleep(0.2)
    run = _run(tmp_path)
    output = "\n".join(lines)
    assert "SIGTERM: stopping after the current step" in output
    assert f"resume with: absa resume {run.id} --local --runs-dir {tmp_path}" in output  # as it was trained
    info = run.info()
    (entry,) = checkpoint.CheckpointStore(run.checkpoints_dir).entries()
    assert info["status"] == "interrupted" and info["checkpoint"] == entry.file
    assert entry.epoch == 0 and 0 < entry.samples_seen < 2048 and entry.samples_seen % 64 == 0
    assert entry.file == f"epoch-0000-sample-{entry.samples_seen:09d}.pt"
    assert checkpoint.load(run.checkpoints_dir / entry.file)["updates"] == entry.samples_seen // 64
    assert not run.lock_path.exists()  # released


def test_a_sigint_the_driver_was_started_ignoring_stays_ignored(tmp_path):
    """`absa train ... &` in a script (a non-interactive shell's background job): SIGINT ignored from the start is
    not turned into a stop (it was); SIGTERM still stops."""
    process, lines = _start(tmp_path, terminal=False,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    process.send_signal(signal.SIGINT)
    _wait_for(process, lines, "step 6/32")  # trained on past it
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143
    output = "\n".join(lines)
    assert "SIGINT" not in output and "SIGTERM: stopping after the current step" in output


def test_a_second_sigint_aborts_at_once(tmp_path):
    """Steps of 1,024 samples (seconds here): the second signal lands inside the step the first one waits for,
    and the process leaves without finishing it and without the stop checkpoint."""
    process, lines = _start(tmp_path, "batch.global_batch_size=1024", "policy.max_global_batch=1024",
                            "batch.per_worker_max=1024", mark="step 1/2")
    process.send_signal(signal.SIGINT)
    _wait_for(process, lines, "SIGINT: stopping after the current step")
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130
    time.sleep(0.2)
    run = _run(tmp_path)
    output = "\n".join(lines)
    # in the first epoch's first step: nothing to resume from, as the line says (it claimed "the last checkpoint")
    assert "aborted; no checkpoint was written yet (a resume starts over)" in output and "Traceback" not in output
    assert run.info()["status"] == "interrupted"
    stops = [e for e in checkpoint.CheckpointStore(run.checkpoints_dir).entries() if e.samples_seen]
    assert not stops  # no stop checkpoint was written


def test_the_printed_resume_command_pastes_into_a_shell(tmp_path, monkeypatch):
    """A runs directory with a space is quoted; the default runs directory is left out; `--local` only for a run
    trained in this process."""
    from absa_cli.cli.driver import resume_command

    monkeypatch.delenv("ABSA_RUNS_DIR", raising=False)
    spaced = RunDir(tmp_path / "my runs" / "quickstart-1")
    assert shlex.split(resume_command(spaced, local=True)) == ["absa", "resume", "quickstart-1", "--local",
                                                                "--runs-dir", str(tmp_path / "my runs")]
    assert resume_command(RunDir(Path("runs") / "quickstart-1"), local=False) == "absa resume quickstart-1"


def test_a_ctrl_c_while_the_command_exits_quits_at_once_with_its_code_and_no_traceback(tmp_path):
    """After the command's last line, Ray's atexit hook shuts Ray down (about a second); a Ctrl-C there printed
    `Exception ignored in atexit callback ... KeyboardInterrupt`. A slow atexit hook stands in for Ray's here."""
    script = tmp_path / "absa_then_slow_exit.py"
    script.write_text("import atexit, sys, time\n"
                      "atexit.register(time.sleep, 30)  # runs after the command's own hooks, as a slow shutdown\n"
                      "sys.argv = ['absa', 'presets', 'list']\n"
                      "from absa_cli.cli.app import main\n"
                      "main()\n")
    process = subprocess.Popen(as_a_terminal_starts([sys.executable, str(script)]), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()
    _wait_for(process, lines, "quickstart")  # the command's output is out: it is exiting
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=10) == 0  # the command's own code: its work was done
    assert process.stderr.read() == ""


def test_two_presses_while_the_main_thread_is_in_native_code_are_two(tmp_path):
    """Python runs a handler once for any number of deliveries that arrive while the main thread sits in native
    code (a `ray.get`, a long torch op): a double Ctrl-C there was taken for one, a stop instead of an abort. Here
    the main thread waits in `Thread.join` (no handler runs until it returns) while another thread takes the two
    deliveries; the driver's handler counts both. A single delivery there is still one stop."""
    from absa_cli.cli.driver import _Signals

    class Controller:
        abort_signal = None
        stops: list[int] = []

        def request_stop(self, signum):
            self.stops.append(signum)

    def deliver(times: int) -> None:
        for _ in range(times):
            time.sleep(0.1)
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)  # taken by this thread, run by the main one

    started_with = signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal starts absa (not CI's)
    try:
        _press(Controller, deliver)
    finally:
        signal.signal(signal.SIGINT, started_with)


def _press(Controller, deliver) -> None:
    from absa_cli.cli.driver import _Signals

    for times, aborted in ((1, False), (2, True)):
        controller = Controller()
        controller.stops = []
        signals = _Signals(controller)
        with signals.installed():
            sender = threading.Thread(target=deliver, args=(times,))
            sender.start()
            try:
                sender.join()  # both deliveries arrive in here
                time.sleep(0.05)  # the eval loop runs the handler
                raised = False
            except KeyboardInterrupt:
                raised = True
        assert (controller.stops, raised, controller.abort_signal) == (
            [signal.SIGINT], aborted, signal.SIGINT if aborted else None), times
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_the_wakeup_fd_is_put_back_unless_a_library_set_its_own_meanwhile():
    import os

    from absa_cli.cli.driver import _Signals

    class Controller:
        abort_signal = None

        def request_stop(self, signum):
            pass

    read, write = os.pipe()
    os.set_blocking(write, False)
    try:
        with _Signals(Controller()).installed():
            pass
        assert signal.set_wakeup_fd(-1) == -1  # none before, none after
        with _Signals(Controller()).installed():
            signal.set_wakeup_fd(write)  # e.g. an event loop started in the main thread
        assert signal.set_wakeup_fd(-1) == write  # it keeps it
    finally:
        os.close(read)
        os.close(write)
