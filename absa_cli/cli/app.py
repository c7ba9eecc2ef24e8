"""``absa``: the Typer application. Importing this module must stay cheap (no torch, no ray)."""

from __future__ import annotations

import re
import sys
from typing import Any

import typer
from typer.core import TyperGroup

try:  # typer 0.2x carries its own copy of click, whose exceptions are the ones raised
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - typer on the public click
    from click.exceptions import ClickException, NoArgsIsHelpError, UsageError

from absa_cli import __version__
from absa_cli.cli import calibrate, hessian, plan, plot, presets, runs, train

class _OneLineUsageErrors(TyperGroup):
    """Usage errors (a missing argument, an option out of range, an unknown command) in absa's format: one
    ``error:`` line naming the problem and where the help is, exit code 2, instead of click's boxed block. Bare
    ``absa`` or ``absa runs`` still print their help, in the docs' notation (:func:`docs_notation`)."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        docs_notation(self)  # here, not in __init__: Typer adds the completion options after building the group
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except NoArgsIsHelpError as exc:  # building it printed the help already (rich); else its message holds it
            message = exc.format_message()
            if message.strip():
                typer.echo(message, err=True)
            sys.exit(exc.exit_code)
        except UsageError as exc:
            sys.stderr.write(f"error: {usage_line(exc)}\n")
            sys.exit(2)
        except ClickException as exc:  # e.g. a file option that cannot be opened
            sys.stderr.write(f"error: {_sentence(exc.format_message())}\n")
            sys.exit(2)
        except typer.Abort:  # Ctrl-C or end of input at a prompt
            sys.stderr.write("aborted\n")
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


def docs_notation(command: Any) -> None:
    """Help as the docs write commands: arguments by upper-case name (``absa resume {RUN_ID} [KEY=VALUE]...``, not
    Typer's ``{run_id} [overrides]...``) and flags without a type column (Typer labels ``--local`` ``<bool>``, which
    reads as if it took a value), a group's list of commands without the docstrings' line breaks. Applied to
    ``command``, its subcommands and their ``--help`` options."""
    for param in command.params:
        if param.param_type_name == "argument" and param.metavar is None:
            param.metavar = "KEY=VALUE" if param.name == "overrides" else param.name.upper()
        elif getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    make_help_option = getattr(command, "_absa_make_help_option", command.get_help_option)

    def help_option(ctx: Any) -> Any:
        option = make_help_option(ctx)
        if option is not None and option.metavar is None:
            option.metavar = ""
        return option

    command._absa_make_help_option = make_help_option  # applied again (main, then a test's runner): wrapped once
    command.get_help_option = help_option
    for sub in getattr(command, "commands", {}).values():
        if sub.help and not sub.short_help:  # a group lists it by its first paragraph, reflowed (Typer keeps the
            sub.short_help = " ".join(sub.help.split("\n\n")[0].split())  # docstring's line breaks there)
        docs_notation(sub)


def usage_line(exc: UsageError) -> str:
    """``Missing argument 'PRESET'.`` → ``missing argument 'PRESET'; see `absa train --help```."""
    where = exc.ctx.command_path if exc.ctx is not None else "absa"
    message = _sentence(exc.format_message())
    # Click's "No such command 'trian'. Did you mean 'train'?" reads as absa's other suggestions do
    message = re.sub(r"^(.*?)\.?\s+Did you mean (.+?)\?$", r"\1 (did you mean \2?)", message)
    return f"{message}; see `{where} --help`"


def _sentence(message: str) -> str:
    message = " ".join(message.split()).replace("Value error, ", "").rstrip(".")  # pydantic's prefix
    return message[:1].lower() + message[1:]


app = typer.Typer(
    name="absa",
    cls=_OneLineUsageErrors,
    help="Elastic, adaptive-batch-size training of image classifiers (ABSA: Hessian-guided batch growth + FGSM).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=True,
)
app.command("train")(train.train)
app.command("resume")(train.resume)
app.command("plan")(plan.plan)
app.command("calibrate")(calibrate.calibrate)
app.command("hessian")(hessian.hessian)
app.command("plot")(plot.plot)
app.add_typer(presets.app, name="presets")
app.add_typer(runs.app, name="runs")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"absa {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Elastic, adaptive-batch-size training of image classifiers."""


class _Console:
    """``sys.stdout`` or ``sys.stderr`` that outlives its reader: once the pipe it writes to is closed (``absa train
    ... | head -1``), what is written is dropped, and the command goes on to its end as if nobody had been reading.
    It used to fail at its next line: a run left ``running`` and locked, exit code 1, nothing said. The console
    is a view; the run's records are in its directory."""

    def __init__(self, stream: Any) -> None:
        self._stream, self._gone = stream, False
        self.failed: OSError | None = None  # a write the system refused (a full disk): said once the command ends

    def write(self, text: str) -> int:
        if not self._gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._close()
            except OSError as error:
                self._fail(error)
        return len(text)

    def flush(self) -> None:
        if not self._gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._close()
            except OSError as error:
                self._fail(error)

    def _fail(self, error: OSError) -> None:
        """A file the output cannot be written to (``> /dev/full``, a disk that filled): dropped from then on like a
        closed pipe, but not silently: ``main`` ends the command with one line and exit code 1."""
        self.failed = error
        self._close()

    def _close(self) -> None:
        """From now on nothing reaches the pipe, Python's own flush at exit included (the file descriptor now
        writes to /dev/null: the same for every writer, os.write too)."""
        import os

        self._gone = True
        try:
            broken = os.fstat(self._stream.fileno())
            devnull = os.open(os.devnull, os.O_WRONLY)
            for fd in (1, 2):  # `2>&1 | head`: the other one writes to the same pipe (signal handlers' os.write too)
                try:
                    if os.path.samestat(os.fstat(fd), broken):
                        os.dup2(devnull, fd)
                except OSError:  # closed
                    pass
            os.close(devnull)
        except (OSError, ValueError):  # not a file descriptor of its own (a test's capture): dropping is enough
            pass

    def __getattr__(self, name: str) -> Any:
        if name == "_stream":  # not set yet (a copy, an unpickling): no endless recursion
            raise AttributeError(name)
        return getattr(self._stream, name)


def main() -> None:
    from absa_cli.cluster import netns

    netns.entry_argv = sys.argv[1:]  # this process is the absa command: it may re-run itself (netns.isolate)
    if sys.stdout is not None:  # None: started with it closed (`>&-`)
        sys.stdout = _Console(sys.stdout)
    if sys.stderr is not None:
        sys.stderr = _Console(sys.stderr)
    code: int | None = None
    try:
        app()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        failed = getattr(sys.stdout, "failed", None)
        if failed is not None:  # what the command printed is lost (a run's records are in its directory)
            sys.stderr.write(f"error: the output could not be written ({failed.strerror or failed}); what this "
                             f"command printed is lost: write it where there is room\n")
            code = code or 1
            raise SystemExit(code) from None
        raise
    finally:
        _quit_at_once_from_now(code)


def _quit_at_once_from_now(code: int | None) -> None:
    """The command's work is done and reported (its exit code ``code``); what is left is the interpreter's exit,
    where Ray's atexit hook shuts its client (and a local cluster) down, about a second. A Ctrl-C there raised
    KeyboardInterrupt inside that hook: a traceback after the command's last line. From now on SIGINT or SIGTERM
    ends the process at once, with the command's own exit code (128 + the signal if it had none: it failed
    unexpectedly); a local cluster goes with it through its reaper (Linux; elsewhere there is no reaper, and Ray's
    hook is left to run). A signal ignored from the start stays so."""
    import os
    import signal

    from absa_cli.cluster import reaper  # the standard library only: cheap

    if not reaper.available():  # no reaper here: Ray's hook must stop the local cluster
        return

    def quit_now(signum: int, frame: Any) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed pipe, a write this signal interrupted: leave regardless
                pass
        os._exit(128 + signum if code is None else code)

    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, quit_now)
