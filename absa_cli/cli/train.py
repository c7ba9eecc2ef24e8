"""``absa train PRESET [KEY=VALUE ...]``: start a run from a preset recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from absa_cli.cli.common import user_errors


def train(
    preset: Annotated[str, typer.Argument(help="Preset recipe (see `absa presets list`).")],
    overrides: Annotated[Optional[list[str]], typer.Argument(
        help="KEY=VALUE config overrides, e.g. epochs=5 optim.lr=0.05.", show_default=False)] = None,
    runs_dir: Annotated[Optional[Path], typer.Option(
        "--runs-dir", help="Where run directories go (default: $ABSA_RUNS_DIR, else ./runs).")] = None,
) -> None:
    """Train a preset: prints `run: <run-id>` first and a summary last."""
    from absa_cli import config as config_mod
    from absa_cli.runs import RunDir, runs_root

    with user_errors():
        config = config_mod.load(preset, overrides or [])
        from absa_cli.local_group import LocalGroup  # torch import: only once the config is known good

        group = LocalGroup(config)  # opens the data first: a missing dataset creates no run directory
        run = RunDir.create(runs_root(runs_dir), config)
    typer.echo(f"run: {run.id}")
    _run_to_end(config, run, group)


def _run_to_end(config, run, group) -> None:
    from absa_cli.controller import Controller
    from absa_cli.metrics import Console

    console = Console()
    controller = Controller(config, run, group, console)
    try:
        summary = controller.run_all()
    except KeyboardInterrupt:
        console.close()
        run.finish("interrupted", last_epoch=controller.progress.epoch)
        typer.echo(f"interrupted; run directory: {run.path}", err=True)
        raise typer.Exit(130) from None
    except BaseException as exc:
        console.close()
        run.finish("failed", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        group.close()
    run.finish("finished", last_epoch=summary["epochs"], updates=summary["updates"],
               final_test_acc=summary["final_test_acc"], best_test_acc=summary["best_test_acc"])
    typer.echo(
        f"summary: {summary['epochs']} epochs, {summary['updates']} updates, "
        f"final test acc {summary['final_test_acc']:.4f} (best {summary['best_test_acc']:.4f}), "
        f"{summary['wall_s']:.1f} s; run directory {run.path}")
