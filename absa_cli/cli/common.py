"""What every command shares: turning user errors into one line and exit code 2, and Ctrl-C into one line and exit
code 130."""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import typer

from absa_cli.errors import UserError


def report_console():
    """The Rich console of a command's report (``absa plan``, ``absa hessian``): the terminal's width on a terminal;
    elsewhere (a pipe, a file, CI) ``$COLUMNS`` or 200 columns, not Rich's 80, at which a table's cells were cut."""
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = 200
    return console


@contextmanager
def user_errors() -> Iterator[None]:
    """Print a ``UserError`` as ``error: <message>`` on stderr (no traceback) and exit with its code (2)."""
    try:
        yield
    except UserError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise typer.Exit(exc.exit_code) from None


@contextmanager
def interrupted(message: str) -> Iterator[None]:
    """Ctrl-C before there is anything to save (Ray starting, workers loading, a calibration timing): ``message``
    on stderr and exit code 130, not a traceback. A second Ctrl-C while libraries load quits with it at once."""
    _QUIT_LINES.append(message)
    try:
        yield
    except KeyboardInterrupt:
        typer.echo(message, err=True)
        raise typer.Exit(130) from None
    finally:
        _QUIT_LINES.pop()


def say(text: bytes) -> None:
    """``text`` on stderr from a signal handler: ``os.write``, since a handler may run inside a write to
    ``sys.stderr``, which is not reentrant; a console that has gone (a closed pipe) is no reason to fail there."""
    try:
        os.write(2, text)
    except OSError:
        pass


_QUIT_LINES: list[str] = []  # the innermost `interrupted` block's line: what a second Ctrl-C during a hold prints
HELD = b"Ctrl-C: stopping once the libraries have loaded (a few seconds); press it again to quit now\n"
HELD_FOR_RAY = b"Ctrl-C: stopping once Ray has started (a few seconds); press it again to quit now\n"


@contextmanager
def held_interrupt(on_quit: Callable[[], None] | None = None, said: bytes = HELD) -> Iterator[None]:
    """Hold Ctrl-C while the block runs and deliver it, to the handler there was before, when the block ends; a
    second Ctrl-C quits at once: ``on_quit`` (e.g. releasing a run's lock), the enclosing ``interrupted`` block's
    line, exit code 130. ``said``: the line the first press gets.

    For loading the heavy libraries. A ``KeyboardInterrupt`` raised in the middle of an import leaves modules half
    initialised: the next access to one (scipy's array-API layer reaching into a half-loaded numpy) can fail with
    an unrelated error and a traceback instead of the one line. And one raised while an extension runs Python code
    through ``PyRun_*`` (as importing torch does) makes CPython end a ``python -m`` process by SIGINT at exit
    (status −2) even after absa handled it. The second press therefore ends the process without unwinding
    (``os._exit``): nothing half-loaded runs again, and nothing was started yet that needs stopping (but for a
    local Ray cluster starting, which its reaper ends with the command; Linux). Outside the main thread, where no
    handler can be set, or where Ctrl-C is ignored (a background job), the block simply runs.

    And for ``ray.init``: a KeyboardInterrupt raised while Ray builds its core worker (whose threads are already
    running) left one that Ray's exit hook tore down with a segmentation fault, exit code 139 instead of 130, in
    about one Ctrl-C in three during a local cluster's start."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) in (None, signal.SIG_IGN):
        yield  # no handler can be set here, the one there is was set from C (it could not be put back), or SIGINT
        return  # is ignored, and must stay so: two presses of it must not end a background job
    held: list[int] = []

    def hold(signum: int, frame: object) -> None:
        held.append(signum)
        if len(held) == 1:
            say(said)
            return
        try:
            if on_quit is not None:
                on_quit()
        finally:  # whatever on_quit met (a lock file gone read-only): quit all the same, nothing unwinds
            say(f"{_QUIT_LINES[-1] if _QUIT_LINES else 'interrupted'}\n".encode())
            os._exit(130)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held:  # also when the block failed: the Ctrl-C was pressed all the same
            signal.raise_signal(signal.SIGINT)  # the previous handler's turn: by default, KeyboardInterrupt here


def held_for_ray(on_quit: Callable[[], None] | None = None) -> Callable[[], ContextManager[None]]:
    """``connect``'s guard for the CLI: Ctrl-C held while ``ray.init`` runs (``held_interrupt``, whose docstring
    says why), the first press told so, a second one quitting after ``on_quit``."""
    return lambda: held_interrupt(on_quit, said=HELD_FOR_RAY)


def load_libraries(*, ray: bool, dataset: str = "", on_quit: Callable[[], None] | None = None) -> None:
    """Import torch and absa's dataset loaders (and Ray with absa's worker group when ``ray``; scipy for SVHN's
    files) with Ctrl-C held until they are loaded (``held_interrupt``: a second press quits, after ``on_quit``)."""
    with held_interrupt(on_quit):
        import absa_cli.data  # noqa: F401  torch, numpy and the loaders

        if dataset == "svhn":
            import scipy.io  # noqa: F401  imported by the SVHN loader when it reads the files
        if ray:
            import absa_cli.cluster.group  # noqa: F401  Ray (only cluster/ imports it)


def check_schedule(config, fix: str = "") -> None:
    """One ``ConfigError`` line, before anything starts, for a config whose batches split badly into workers and
    micro-batches on the group sizes ``cluster.max_workers`` allows (``check_splits``), or whose ``cluster.profile``
    cannot be read."""
    check_splits(config, fix)
    if config.cluster.profile:  # a profile that cannot be read: one line now, not when the group first forms
        from absa_cli.run import profile

        profile.load(config.cluster.profile)


def check_splits(config, fix: str = "") -> None:
    """``ConfigError`` for a schedule whose batches split badly on a group size up to ``cluster.max_workers`` (e.g. a
    prime global batch); ``fix``: what the line advises instead of batches with small factors."""
    from absa_cli.decide.membership import check_geometries
    from absa_cli.decide.policy import reachable_batches

    check_geometries(config, reachable_batches(config), fix)


def check_sample_log(config, run=None) -> None:
    """One line, before anything starts, for a ``logging.sample_log_dir`` this machine cannot write: a worker that
    could not open its audit log would fail to join, and the group would wait for it as for missing capacity. Only
    where workers start from here (not `absa plan`, nor `--submit`, whose workers write on the cluster); ``run``:
    the run a resume continues, whose saved config is where the setting is changed."""
    if not config.logging.sample_log_dir:
        return
    from absa_cli.run.rundir import check_writable

    fix = (f"give another with `absa resume {run.id} logging.sample_log_dir=DIR`" if run is not None else
           "choose a folder this user can write (it is made if missing)")
    check_writable(Path(config.logging.sample_log_dir), what="logging.sample_log_dir", fix=fix)


def complete_preset(incomplete: str) -> list[str]:
    """Shell completion of preset names (`absa --install-completion` installs the hook)."""
    from absa_cli.config import preset_names

    return [name for name in preset_names() if name.startswith(incomplete)]


def complete_run_id(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion of run ids under --runs-dir (when already typed), else $ABSA_RUNS_DIR or ./runs."""
    from absa_cli.run.rundir import list_runs, runs_root

    return [run.id for run in list_runs(runs_root(ctx.params.get("runs_dir"))) if run.id.startswith(incomplete)]
