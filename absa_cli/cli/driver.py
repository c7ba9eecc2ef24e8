"""What `absa train` and `absa resume` share: the worker group, the run lock, signals, and the end of a run.

Signals: the first SIGINT/SIGTERM asks the controller to stop after the step in progress; it checkpoints, marks
the run ``interrupted``, prints the resume command and exits 130/143. A second one aborts at once (the last
checkpoint still stands). Every other failure marks the run ``failed``, which stays resumable.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager
from typing import Any, Iterator

import typer

from absa_cli.errors import UserError
from absa_cli.metrics import fmt


def private_network(config, address: str | None, local: bool) -> None:
    """Re-run this command in a private network namespace if it is about to start a local Ray cluster
    (absa_cli.cluster.netns). A dataset download needs the network, so it happens first, out here."""
    from absa_cli.cluster import netns

    if config.data.download and not local and os.environ.get(netns.ENV) != netns.INSIDE:
        check_datasets(config)
    note = netns.isolate(address, local)
    if note:
        typer.echo(note, err=True)


def check_datasets(config) -> None:
    """Open (or download) both splits: a missing dataset, or a global batch larger than the training set, fails in
    one line before anything starts."""
    from absa_cli.data import build_dataset
    from absa_cli.policy import check_batch_fits

    data = config.data
    for split in (data.train_split, "test"):
        dataset = build_dataset(data.name, split, data.resolved_root(), seed=data.seed,
                                size=data.test_size if split == "test" else data.train_size, download=data.download)
        if split != "test":
            check_batch_fits(config, len(dataset))


def make_group(config, max_workers: int, address: str | None, local: bool) -> tuple[Any, str]:
    """The worker group and a line saying where it runs. The dataset is opened here first, so a missing one fails
    in one line before a Ray cluster starts (and, for `absa train`, before a run directory exists)."""
    if config.logging.tensorboard:
        from absa_cli.tensorboard import check_available

        check_available()  # before any run directory or cluster exists
    if local:
        from absa_cli.local_group import LocalGroup  # torch import: only once the config is known good
        from absa_cli.policy import check_batch_fits

        group = LocalGroup(config)
        check_batch_fits(config, group.num_train_samples)
        return group, "local: one worker in this process"
    check_datasets(config)
    from absa_cli.cluster.group import RayWorkerGroup
    from absa_cli.cluster.runtime import connect

    where = connect(address)
    return RayWorkerGroup(config, max_workers), where


def resume_command(run) -> str:
    from absa_cli.runs import runs_root

    default = runs_root(None).resolve()
    where = "" if run.path.parent.resolve() == default else f" --runs-dir {run.path.parent}"
    return f"absa resume {run.id}{where}"


def drive(config, run, group, lock, where: str, *, resume: bool) -> None:
    """Run (or resume) to the end; always writes the run's status, closes the group and releases the lock.

    The signal handlers stay installed until all of that is done; once the outcome is decided, further signals are
    ignored, so a late Ctrl-C can neither leave `run.json` saying `running` nor skip the lock's release.
    """
    from absa_cli.controller import Controller, Diverged, StopRequested
    from absa_cli.lock import LockLost
    from absa_cli.metrics import Console

    console = Console()
    console.line(where)
    controller = Controller(config, run, group, console, max_workers=config.cluster.max_workers)
    controller.lock = lock
    signals = _Signals(controller)
    with signals.installed():
        try:
            try:
                if resume:
                    controller.resume()
                summary = controller.run_all()
            except StopRequested as stop:
                signals.ignore = True
                console.close()
                run.finish("interrupted", last_epoch=controller.progress.epoch, updates=controller.progress.updates,
                           checkpoint=stop.checkpoint)
                typer.echo(f"interrupted by {signal.Signals(stop.signum).name} after update "
                           f"{controller.progress.updates}; checkpoint {stop.checkpoint}; resume with: "
                           f"{resume_command(run)}", err=True)
                raise typer.Exit(128 + stop.signum) from None
            except KeyboardInterrupt:  # the second signal: abort now, the last checkpoint stands
                signals.ignore = True
                console.close()
                run.finish("interrupted", last_epoch=controller.progress.epoch)
                typer.echo(f"aborted; the last checkpoint stands; resume with: {resume_command(run)}", err=True)
                raise typer.Exit(128 + (signals.last or signal.SIGINT)) from None
            except LockLost as exc:  # the run is another driver's now: write nothing (lock.release checks too)
                signals.ignore = True
                console.close()
                sys.stderr.write(f"error: {exc}\n")
                raise typer.Exit(1) from None
            except Diverged as exc:  # one line; the checkpoints are those of before the divergence
                signals.ignore = True
                console.close()
                run.finish("diverged", last_epoch=controller.progress.epoch, updates=controller.progress.updates,
                           error=str(exc))
                sys.stderr.write(f"error: {exc}\n")
                raise typer.Exit(1) from None
            except UserError as exc:  # e.g. no usable checkpoint: one line, and the run stays resumable
                signals.ignore = True
                console.close()
                run.finish("failed", error=str(exc))
                sys.stderr.write(f"error: {exc}\n")
                raise typer.Exit(exc.exit_code) from None
            except BaseException as exc:
                signals.ignore = True
                console.close()
                if not isinstance(exc, typer.Exit):
                    run.finish("failed", error=f"{type(exc).__name__}: {exc}")
                raise
            signals.ignore = True
            run.finish("finished", last_epoch=summary["epochs"], updates=summary["updates"],
                       final_test_acc=summary["final_test_acc"], best_test_acc=summary["best_test_acc"])
        finally:
            signals.ignore = True
            try:
                controller.close()
                group.close()
            finally:
                lock.release()
    typer.echo(
        f"summary: {summary['epochs']} epochs, {summary['updates']} updates, final batch "
        f"{summary['final_global_batch_size']}, final test acc {fmt(summary['final_test_acc'], '.4f')} "
        f"(best {fmt(summary['best_test_acc'], '.4f')}), {summary['wall_s']:.1f} s; run directory {run.path}")


class _Signals:
    """SIGINT/SIGTERM handlers for the driver's main thread (see the module docstring)."""

    def __init__(self, controller) -> None:
        self.controller = controller
        self.last: int | None = None
        self.ignore = False  # set once the run's outcome is decided: only bookkeeping is left

    def handle(self, signum: int, frame: Any) -> None:
        if self.ignore:
            return
        first = self.last is None
        self.last = signum
        if not first:
            raise KeyboardInterrupt
        self.controller.request_stop(signum)
        # os.write, not print: safe whatever the main thread was doing when the signal arrived
        os.write(2, f"\n{signal.Signals(signum).name}: stopping after the current step and checkpointing "
                    f"(send it again to abort at once)\n".encode())

    @contextmanager
    def installed(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
