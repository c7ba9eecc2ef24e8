"""Metrics records and where they go, and the console a human watches (run/: stdlib + rich).

Every record is one JSON object on one line of ``metrics.jsonl`` with a ``kind``:
- ``geometry``: the batch geometry at the start and at every change;
- ``epoch``: one per completed epoch (fields in ``EPOCH_FIELDS``; docs/metrics.md describes each).

The console shows a rich progress bar on a terminal and plain timestamped lines otherwise (CI, `ray job logs`).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

EPOCH_FIELDS = (
    "epoch", "updates", "samples_seen", "dropped_samples", "global_batch_size", "num_workers", "grad_accum_steps",
    "lr", "train_loss", "train_acc", "test_loss", "test_acc", "epoch_s",
    "adv_ratio", "eigenvalue", "eigenvalue_rechecks", "probe_hvps", "probe_s", "policy_reason", "growth",
    "growth_epochs_early", "step_s", "train_s", "eval_s",
)


class JsonlSink:
    """Appends records to ``metrics.jsonl``, flushed per record so a crash loses nothing already written."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def write(self, record: dict[str, Any]) -> None:
        """A diverged run's NaN or infinite loss is written as null (strict JSON), never a crash of the run."""
        line = json.dumps(_finite(record), allow_nan=False)
        with self.path.open("a") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())  # on disk before the checkpoint that counts its bytes (rundir.rewind_metrics)


    def close(self) -> None:
        """Nothing stays open: each record opens and closes the file."""


class FanOut:
    """The same records to several sinks (``metrics.jsonl`` first; TensorBoard when configured)."""

    def __init__(self, *sinks: Any) -> None:
        self.sinks = sinks

    def write(self, record: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.write(record)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


SPARK = "▁▂▃▄▅▆▇█"


class Console:
    """Progress for humans.

    On a terminal: a live view (rich) that stays at the bottom — the epoch's progress bar with samples/s and ETA,
    and a status panel (epoch, geometry, LR, λ_max with its trend, adversarial fraction, train and test figures,
    updates, the last policy decision) — while events (resize, failure, epoch summaries) scroll above it.
    Elsewhere (CI, ``ray job logs``, a pipe): plain timestamped lines, one per chunk and per event, no escape codes.
    """

    def __init__(self, stream: TextIO | None = None, force_plain: bool = False) -> None:
        from rich.console import Console as RichConsole

        self.stream = stream or sys.stdout
        self.rich = RichConsole(file=self.stream, highlight=False)
        self.interactive = self.rich.is_terminal and not force_plain
        self.state: dict[str, Any] = {}  # what the status panel shows
        self.eigenvalues: list[float] = []
        self._live = None
        self._progress = None
        self._task = None

    # ------------------------------------------------------------------------------------------------ events

    def line(self, text: str) -> None:
        """An event line (geometry change, resize, failure, summary): above the live view, or a plain line."""
        if self.interactive:
            self.rich.print(text)
        else:
            self.stream.write(f"{time.strftime('%H:%M:%S')} {_strip_markup(text)}\n")
            self.stream.flush()

    def status(self, **fields: Any) -> None:
        """Update the panel's fields (policy decision, geometry, LR, ...); redrawn at the next refresh."""
        self.state.update(fields)

    def epoch_started(self, epoch: int, num_epochs: int, num_steps: int, description: str,
                      steps_done: int = 0) -> None:
        self.status(epoch=epoch, num_epochs=num_epochs, geometry=description)
        if not self.interactive:
            resumed = f" (resumed after step {steps_done})" if steps_done else ""  # a mid-epoch checkpoint
            self.line(f"epoch {epoch}/{num_epochs}: {num_steps} steps{resumed}, {description}")
            return
        self._start_live()
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(f"epoch {epoch}/{num_epochs}", total=num_steps, completed=steps_done,
                                             rate="")

    def chunk_done(self, steps_done: int, num_steps: int, samples_per_s: float, loss: float, **fields: Any) -> None:
        """After each chunk of steps; ``fields`` (lr, updates, train_acc, ...) go to the panel."""
        self.status(samples_per_s=samples_per_s, train_loss=loss, **fields)
        rate = f"{samples_per_s:,.0f} samples/s  loss {loss_text(loss, 3)}"
        if self.interactive and self._progress is not None:
            self._progress.update(self._task, completed=steps_done, rate=rate)
        else:
            self.line(f"  step {steps_done}/{num_steps}  {rate}")

    def epoch_done(self, record: dict[str, Any]) -> None:
        eigenvalue = record.get("eigenvalue")
        if eigenvalue is not None:
            self.eigenvalues.append(eigenvalue)
        self.status(lr=record["lr"], updates=record["updates"], train_loss=record["train_loss"],
                    train_acc=record["train_acc"], test_acc=record["test_acc"], adv_ratio=record.get("adv_ratio"),
                    policy=record.get("policy_reason"))
        curvature = f" | λ_max {eigenvalue:.4g} ({record['probe_s']:.1f}s)" if eigenvalue is not None else ""
        self.line(
            f"epoch {record['epoch']}: train loss {loss_text(record['train_loss'], 4)} acc {record['train_acc']:.3f} | "
            f"test acc {record['test_acc']:.3f} | batch {record['global_batch_size']} "
            f"lr {record['lr']:.4g} adv {record.get('adv_ratio', 0):.3g}{curvature} | "
            f"updates {record['updates']} | {record['epoch_s']:.1f}s")
        if record.get("policy_reason"):
            self.line(f"  [dim]policy:[/] {record['policy_reason']}")

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
            self._progress = self._task = None

    # ------------------------------------------------------------------------------------------- live view

    def _start_live(self) -> None:
        if self._live is not None:
            return
        from rich.live import Live
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.rich)
        self._live = Live(_LiveView(self), console=self.rich, refresh_per_second=4)  # the last frame stays
        self._live.start()

    def panel(self):
        """The status panel as a rich renderable (also what the tests inspect)."""
        from rich.panel import Panel
        from rich.table import Table

        s = self.state
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        grid.add_column(style="bold")
        grid.add_column()
        grid.add_row("epoch", f"{s.get('epoch', '-')}/{s.get('num_epochs', '-')}", "updates", fmt(s.get("updates")))
        grid.add_row("geometry", str(s.get("geometry", "-")), "LR", fmt(s.get("lr"), ".4g"))
        grid.add_row("λ_max", self._curvature(), "adversarial", fmt(s.get("adv_ratio"), ".3g"))
        grid.add_row("train", f"loss {loss_text(s.get('train_loss'), 4)}  acc {fmt(s.get('train_acc'), '.3f')}",
                     "test acc", fmt(s.get("test_acc"), ".3f"))
        grid.add_row("speed", f"{fmt(s.get('samples_per_s'), ',.0f')} samples/s", "", "")
        grid.add_row("policy", str(s.get("policy", "-")), "", "")
        return Panel(grid, title="absa", title_align="left", border_style="blue")

    def _curvature(self) -> str:
        """The last λ_max, an arrow against the one before, and a sparkline of the whole history (log scale)."""
        values = self.eigenvalues
        if not values:
            return "not probed yet"
        trend = ""
        if len(values) > 1:
            trend = " ↓" if values[-1] < values[-2] else " ↑" if values[-1] > values[-2] else " →"
        logs = [math.log(max(v, 1e-12)) for v in values[-24:]]
        low, high = min(logs), max(logs)
        spark = "".join(SPARK[int((v - low) / (high - low) * (len(SPARK) - 1)) if high > low else 0] for v in logs)
        return f"{values[-1]:.4g}{trend}  {spark}"


class _LiveView:
    """Redrawn by rich at every refresh: the progress bar over the status panel."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def __rich__(self):
        from rich.console import Group

        parts = [self.console.panel()]
        if self.console._progress is not None:
            parts.insert(0, self.console._progress)
        return Group(*parts)


def fmt(value: Any, spec: str = "") -> str:
    """``value`` formatted with ``spec``, or "-" when it is missing (an unprobed λ, a run with no epoch yet); a value
    of another type than the spec's (a hand-edited record) as it is."""
    if value is None:
        return "-"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def loss_text(loss: Any, decimals: int) -> str:
    """A loss with ``decimals`` places while it is a loss's size; one blowing up in four significant digits
    (``1.056e+10``, not eleven digits and four zeros), as the collapse line gives it."""
    if isinstance(loss, numbers.Real) and not isinstance(loss, bool) and abs(loss) >= 1e4:  # numpy's too
        return fmt(loss, ".4g")
    return fmt(loss, f".{decimals}f")


def _strip_markup(text: str) -> str:
    from rich.text import Text

    return Text.from_markup(text).plain
