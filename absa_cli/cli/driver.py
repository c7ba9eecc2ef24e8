"""What `absa train` and `absa resume` share: the worker group, the run lock, signals, and the end of a run.

Signals: the first SIGINT/SIGTERM asks the controller to stop after the step in progress; it checkpoints, marks
the run ``interrupted``, prints the resume command and exits 130/143. A second one aborts at once (the last
checkpoint still stands). How each ending is reported is ``driver/outcome.py``'s; an internal error marks the run
``failed``, which stays resumable, and keeps its traceback.
"""

from __future__ import annotations

import os
import shlex
import signal
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import typer

from absa_cli.cli.common import held_for_ray, load_libraries, say


def private_network(config, address: str | None, local: bool) -> None:
    """Re-run this command in a private network namespace if it is about to start a local Ray cluster
    (absa_cli.cluster.netns). A dataset download needs the network, so it happens first, out here."""
    from absa_cli.cluster import netns

    if config.data.download and not local and os.environ.get(netns.ENV) != netns.INSIDE:
        load_libraries(ray=False, dataset=config.data.name)
        check_datasets(config)
    note = netns.isolate(address, local)
    if note:
        typer.echo(note, err=True)


def check_datasets(config) -> dict[str, Any]:
    """Open (or download) both splits: a missing dataset, or a global batch larger than the training set, fails in
    one line before anything starts. What checkpoints record of the training set (``ImageDataset.identity``)."""
    from absa_cli.data import open_split
    from absa_cli.decide.policy import check_batch_fits, training_set_notes

    data = config.data
    train_set = open_split(data, data.train_split)
    check_batch_fits(config, len(train_set))
    for note in training_set_notes(config, len(train_set)):
        typer.echo(note, err=True)
    open_split(data, "test")
    return train_set.identity()


def make_group(config, address: str | None, local: bool, run_id: str | None = None,
               on_quit: Callable[[], None] | None = None) -> tuple[Any, str]:
    """The worker group and a line saying where it runs. The dataset is opened here first, so a missing one fails
    in one line before a Ray cluster starts (and, for `absa train`, before a run directory exists). ``run_id``: the
    Ray job carries it (and the preset) in its metadata. Ctrl-C is held while ``ray.init`` runs (``held_for_ray``:
    a KeyboardInterrupt inside Ray's half-built core worker crashed its exit hook; a second press quits, after
    ``on_quit``)."""
    if config.logging.tensorboard:
        from absa_cli.run.tensorboard import check_available

        check_available()  # before any run directory or cluster exists
    if config.cluster.profile:
        from absa_cli.run import profile

        note = profile.untimed_communication(profile.load(config.cluster.profile), config.cluster.max_workers,
                                             config.preset)
        if note:  # the group would always grow: more workers look free
            typer.echo(note, err=True)
    if local:
        from absa_cli.driver.local_group import LocalGroup  # torch import: only once the config is known good
        from absa_cli.decide.policy import check_batch_fits, training_set_notes

        group = LocalGroup(config)
        check_batch_fits(config, group.num_train_samples)
        for note in training_set_notes(config, group.num_train_samples):
            typer.echo(note, err=True)
        return group, "local: one worker in this process"
    training_set = check_datasets(config)  # as the driver reads it: a resume checks it before a worker starts
    from absa_cli.cluster.group import RayWorkerGroup
    from absa_cli.cluster.runtime import connect

    metadata = {"absa_run_id": run_id, "absa_preset": config.preset} if run_id else None
    where = connect(address, metadata=metadata, guard=held_for_ray(on_quit))
    joined = bool(address or os.environ.get("RAY_ADDRESS"))  # as connect decides: else a local cluster, no autoscaler
    return RayWorkerGroup(config, autoscaler=joined, training_set=training_set), where


def resume_command(run, local: bool) -> str:
    """The command that continues ``run`` exactly, ready to paste into a shell: a run trained in this process
    (``--local``) continues there (on a Ray worker its steps would run with another thread count: not the same
    numbers)."""
    from absa_cli.run.rundir import runs_root

    default = runs_root(None).resolve()
    where = "" if run.path.parent.resolve() == default else f" --runs-dir {shlex.quote(str(run.path.parent))}"
    return f"absa resume {run.id}{' --local' if local else ''}{where}"


def drive(config, run, group, lock, where: str, *, resume: bool, local: bool,
          undo: Callable[[], Any] | None = None) -> None:
    """Run (or resume) to the end, then report how it ended (``driver/outcome.py``). Whatever happens, the run's
    status is written (``_record``), the group closed and the lock released; signals are ignored once the outcome is
    decided."""
    from absa_cli.driver.controller import Controller
    from absa_cli.run.metrics import Console
    from absa_cli.run.rundir import Status

    controller = Controller(config, run, group, Console(), lock=lock)
    controller.console.line(where)
    signals = _Signals(controller)
    with signals.installed():
        try:
            try:
                ending = controller.train(resume=resume)
            finally:
                signals.ignore = True
                controller.console.close()
            _record(ending, run, undo)
        except BaseException as exc:  # an internal error: the run stays resumable and the traceback stays
            run.finish(Status.FAILED, error=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            try:
                controller.close()
                group.close()
            finally:
                lock.release()
    report(ending, run, local)


def _record(ending, run, undo: Callable[[], Any] | None) -> None:
    """``run.json`` after an ending: its status and fields; for a resume refused before it restored anything (no
    usable checkpoint: one line, exit 2), ``undo``: run.json and config.yaml put back whole, as the resume found
    them: the run is left as it was, not marked failed."""
    if ending.status is not None:
        run.finish(ending.status, **ending.fields)
    elif ending.put_back and undo is not None:
        undo()


def report(ending, run, local: bool) -> None:
    """The outcome's line (stdout for a finished run, else stderr, with the resume command when it can resume)."""
    message = f"{ending.message}; resume with: {resume_command(run, local)}" if ending.resumable else ending.message
    typer.echo(message, err=ending.to_stderr)
    if ending.exit_code:
        raise typer.Exit(ending.exit_code)


class _Signals:
    """SIGINT/SIGTERM handlers for the driver's main thread (see the module docstring)."""

    def __init__(self, controller) -> None:
        self.controller = controller
        self.last: int | None = None
        self.ignore = False  # set once the run's outcome is decided: only bookkeeping is left
        self.wakeup: int | None = None  # the read end of Python's wakeup fd: one byte per delivered signal
        self.ahead: dict[int, int] = {}  # deliveries of a signal read from it before that signal's handler ran

    def handle(self, signum: int, frame: Any) -> None:
        """Python runs a handler once for any number of deliveries that arrive while the main thread is in native
        code (a ``ray.get``, a long torch op): two presses of Ctrl-C there were one stop. The wakeup fd has a byte
        per delivery, so each is counted."""
        for _ in range(self._deliveries(signum)):
            self._one(signum)

    def _deliveries(self, signum: int) -> int:
        if self.wakeup is not None:
            try:
                for byte in os.read(self.wakeup, 512):
                    self.ahead[byte] = self.ahead.get(byte, 0) + 1
            except BlockingIOError:
                pass
        return max(1, self.ahead.pop(signum, 0))  # this call is one delivery, whatever the fd says

    def _one(self, signum: int) -> None:
        if self.ignore:
            return
        first = self.last is None
        self.last = signum
        if not first:
            self.controller.abort_signal = signum
            raise KeyboardInterrupt
        self.controller.request_stop(signum)
        # os.write, not print: safe whatever the main thread was doing when the signal arrived
        say(f"\n{signal.Signals(signum).name}: stopping after the current step and checkpointing "
            f"(send it again to abort at once)\n".encode())

    @contextmanager
    def installed(self) -> Iterator[None]:
        """A signal the process was started ignoring (SIGINT in a non-interactive shell's background job) stays
        ignored."""
        read, write = os.pipe()
        for end in (read, write):
            os.set_blocking(end, False)
        self.wakeup, self.ahead = read, {}
        woken = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        previous = {sig: signal.signal(sig, self.handle) for sig in (signal.SIGINT, signal.SIGTERM)
                    if signal.getsignal(sig) is not signal.SIG_IGN}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            replaced = signal.set_wakeup_fd(woken)
            if replaced != write:  # another library set its own since: it keeps it
                signal.set_wakeup_fd(replaced)
            self.wakeup = None
            os.close(read)
            os.close(write)
