"""``absa train PRESET [KEY=VALUE ...]``: start a run from a preset recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from absa_cli.cli.common import user_errors

MAX_GPUS_HELP = ("Most workers the run may grow to: one per GPU, or one per CPU slot on a cluster without GPUs "
                 "(so on a laptop --max-gpus bounds CPU workers).")


def train(
    preset: Annotated[str, typer.Argument(help="Preset recipe (see `absa presets list`).")],
    overrides: Annotated[Optional[list[str]], typer.Argument(
        help="KEY=VALUE config overrides, e.g. epochs=5 optim.lr=0.05.", show_default=False)] = None,
    max_gpus: Annotated[Optional[int], typer.Option("--max-gpus", min=1, help=MAX_GPUS_HELP,
                                                    show_default="the preset's cluster.max_workers")] = None,
    address: Annotated[Optional[str], typer.Option(
        "--address", help="Ray cluster to join (default: $RAY_ADDRESS, else start a local one on 127.0.0.1).")] = None,
    local: Annotated[bool, typer.Option("--local", help="Train in this process, without Ray (debugging).")] = False,
    runs_dir: Annotated[Optional[Path], typer.Option(
        "--runs-dir", help="Where run directories go (default: $ABSA_RUNS_DIR, else ./runs).")] = None,
) -> None:
    """Train a preset on a Ray worker group that grows with the batch: prints `run: <run-id>` first and a summary
    last."""
    from absa_cli import config as config_mod
    from absa_cli.runs import RunDir, runs_root

    with user_errors():
        config = config_mod.load(preset, overrides or [])
        if max_gpus is not None:
            config.cluster.max_workers = max_gpus
        if local:
            if (max_gpus or 1) != 1:
                raise config_mod.ConfigError("--local trains on one worker; drop --max-gpus or --local")
            config.cluster.max_workers = 1
        group, where = _make_group(config, config.cluster.max_workers, address, local)
        run = RunDir.create(runs_root(runs_dir), config)
    typer.echo(f"run: {run.id}")
    _run_to_end(config, run, group, config.cluster.max_workers, where)


def _make_group(config, max_gpus: int, address: str | None, local: bool):
    """The worker group; the data is opened before any run directory exists, so a missing dataset leaves none."""
    if local:
        from absa_cli.local_group import LocalGroup  # torch import: only once the config is known good

        return LocalGroup(config), "local: one worker in this process"
    from absa_cli.data import build_dataset

    data = config.data
    for split in (data.train_split, "test"):  # fail here, in one line, rather than inside every worker
        build_dataset(data.name, split, data.resolved_root(), seed=data.seed, size=data.test_size if split == "test"
                      else data.train_size, download=data.download)
    from absa_cli.cluster.group import RayWorkerGroup
    from absa_cli.cluster.runtime import connect

    where = connect(address)
    return RayWorkerGroup(config, max_gpus), where


def _run_to_end(config, run, group, max_workers: int, where: str) -> None:
    from absa_cli.controller import Controller
    from absa_cli.metrics import Console

    console = Console()
    console.line(where)
    controller = Controller(config, run, group, console, max_workers=max_workers)
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
        f"summary: {summary['epochs']} epochs, {summary['updates']} updates, final batch "
        f"{summary['final_global_batch_size']}, final test acc {summary['final_test_acc']:.4f} "
        f"(best {summary['best_test_acc']:.4f}), {summary['wall_s']:.1f} s; run directory {run.path}")
