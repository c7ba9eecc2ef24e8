"""Metrics records and where they go (layer 0: stdlib + rich).

Every record is one JSON object on one line of ``metrics.jsonl`` with a ``kind``:
- ``geometry``: the batch geometry at the start and at every change;
- ``epoch``: one per completed epoch (fields in ``EPOCH_FIELDS``; docs/metrics.md describes each).

The console shows a rich progress bar on a terminal and plain timestamped lines otherwise (CI, `ray job logs`).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

EPOCH_FIELDS = (
    "epoch", "updates", "samples_seen", "global_batch_size", "num_workers", "grad_accum_steps", "lr",
    "train_loss", "train_acc", "test_loss", "test_acc", "epoch_s",
    "adv_ratio", "eigenvalue", "probe_hvps", "probe_s", "policy_reason",
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


class Console:
    """Progress for humans: a rich bar on a terminal, plain timestamped lines elsewhere."""

    def __init__(self, stream: TextIO | None = None, force_plain: bool = False) -> None:
        from rich.console import Console as RichConsole

        self.stream = stream or sys.stdout
        self.rich = RichConsole(file=self.stream, highlight=False)
        self.interactive = self.rich.is_terminal and not force_plain
        self._progress = None
        self._task = None

    def line(self, text: str) -> None:
        """An event line (geometry change, summary): rich markup on a terminal, plain text otherwise."""
        if self.interactive:
            self.rich.print(text)
        else:
            self.stream.write(f"{time.strftime('%H:%M:%S')} {_strip_markup(text)}\n")
            self.stream.flush()

    def epoch_started(self, epoch: int, num_epochs: int, num_steps: int, description: str) -> None:
        if not self.interactive:
            self.line(f"epoch {epoch}/{num_epochs}: {num_steps} steps, {description}")
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self._progress = Progress(
            TextColumn(f"epoch {epoch}/{num_epochs}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=self.rich, transient=True)
        self._progress.start()
        self._task = self._progress.add_task("train", total=num_steps, rate="")

    def chunk_done(self, steps_done: int, num_steps: int, samples_per_s: float, loss: float) -> None:
        rate = f"{samples_per_s:,.0f} samples/s  loss {loss:.3f}"
        if self.interactive and self._progress is not None:
            self._progress.update(self._task, completed=steps_done, rate=rate)
        else:
            self.line(f"  step {steps_done}/{num_steps}  {rate}")

    def epoch_done(self, record: dict[str, Any]) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        eigenvalue = record.get("eigenvalue")
        curvature = f" | λ_max {eigenvalue:.4g} ({record['probe_s']:.1f}s)" if eigenvalue is not None else ""
        self.line(
            f"epoch {record['epoch']}: train loss {record['train_loss']:.4f} acc {record['train_acc']:.3f} | "
            f"test acc {record['test_acc']:.3f} | batch {record['global_batch_size']} "
            f"lr {record['lr']:.4g} adv {record.get('adv_ratio', 0):.3g}{curvature} | "
            f"updates {record['updates']} | {record['epoch_s']:.1f}s")
        if record.get("policy_reason"):
            self.line(f"  [dim]policy:[/] {record['policy_reason']}")

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _strip_markup(text: str) -> str:
    from rich.text import Text

    return Text.from_markup(text).plain
