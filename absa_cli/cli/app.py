"""``absa``: the Typer application. Importing this module must stay cheap (no torch, no ray)."""

from __future__ import annotations

import sys

import typer

from absa_cli import __version__
from absa_cli.cli import calibrate, hessian, plan, plot, presets, runs, train

app = typer.Typer(
    name="absa",
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


def main() -> None:
    from absa_cli.cluster import netns

    netns.entry_argv = sys.argv[1:]  # this process is the absa command: it may re-run itself (netns.isolate)
    app()
