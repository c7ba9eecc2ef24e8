"""``absa plot RUN_ID [RUN_ID ...] [-o FILE.png] [--x updates|epoch|time]``: a run's curves, or several overlaid."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from absa_cli.cli.common import complete_run_id, user_errors


class XAxis(str, Enum):
    updates = "updates"
    epoch = "epoch"
    time = "time"


def plot(
    run_ids: Annotated[list[str], typer.Argument(help="Runs to draw, overlaid in one figure (one colour each).",
                                                 metavar="RUN_ID", show_default=False,
                                                 autocompletion=complete_run_id)],
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="The image to write: .png, .pdf, .svg, .jpg, ... (by its extension).",
        show_default="runs/<first run id>/plot.png, or plot-<x>.png for --x epoch|time")] = None,
    x: Annotated[XAxis, typer.Option(
        "--x", help="x axis: cumulative SGD updates, epoch, or wall time (sum of epoch_s).")] = XAxis.updates,
    runs_dir: Annotated[Optional[Path], typer.Option(
        "--runs-dir", help="Where run directories are (default: $ABSA_RUNS_DIR, else ./runs).")] = None,
) -> None:
    """Plot global batch and workers, LR, λ_max and accuracy of runs (metrics.jsonl); prints `plot: <path>`."""
    from absa_cli.run import plots
    from absa_cli.errors import UserError
    from absa_cli.run.rundir import check_run_id, no_run, runs_root

    root = runs_root(runs_dir)
    with user_errors():
        runs = []
        for run_id in run_ids:
            run_dir = root / check_run_id(run_id)
            if not any((run_dir / name).is_file() for name in ("run.json", "metrics.jsonl")):  # an empty folder too
                raise UserError(no_run(run_id, root))
            runs.append(plots.load_run(run_dir))
        path = output or root / run_ids[0] / ("plot.png" if x is XAxis.updates else f"plot-{x.value}.png")
        plots.check_output(path, "--output", needs="absa plot")
        plots.render(runs, x.value, path)
    typer.echo(f"plot: {path}")
