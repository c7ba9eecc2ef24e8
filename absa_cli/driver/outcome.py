"""How a run ends: one ``Outcome`` value instead of an exception per ending.

``Controller.train`` returns one; ``cli/driver.py`` writes its status to ``run.json``, prints its message and exits
with its code. The endings, with the status each leaves (``run.rundir.Status``, the one vocabulary of statuses):

| ending | status | exit code | stream |
|---|---|---|---|
| finished | finished | 0 | the summary on stdout |
| stopped by SIGINT/SIGTERM after the step in progress, with a checkpoint | interrupted | 128 + signal | stderr |
| aborted by a second signal (the last checkpoint stands) | interrupted | 128 + signal | stderr |
| diverged (a non-finite loss or weights) | diverged | 1 | stderr |
| a user error found while running (e.g. no usable checkpoint) | failed | 2 | stderr |
| the lock was taken over by another driver | unchanged (the run is the other driver's) | 1 | stderr |

An internal error is not an outcome: the run is marked failed (still resumable) and its traceback stays.
"""

from __future__ import annotations

import math
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from absa_cli.run.rundir import Status


@dataclass(frozen=True)
class Outcome:
    status: Status | None  # run.json's status afterwards; None: leave run.json alone (another driver owns the run)
    exit_code: int
    message: str  # one line
    resumable: bool = False  # the message goes on with how to resume
    fields: dict[str, Any] = field(default_factory=dict)  # more run.json fields
    summary: dict[str, Any] | None = None  # the finished run's figures

    @property
    def to_stderr(self) -> bool:
        return self.exit_code != 0


def finished(summary: dict[str, Any], message: str) -> Outcome:
    fields = {"last_epoch": summary["epochs"], "updates": summary["updates"],
              "final_test_acc": summary["final_test_acc"], "best_test_acc": summary["best_test_acc"],
              "wall_s": round(summary["wall_s"], 3)}  # the training, first worker start to last checkpoint
    return Outcome(Status.FINISHED, 0, message, fields=fields, summary=summary)


def stopped(signum: int, checkpoint: str | None, epoch: int, updates: int) -> Outcome:
    kept = f"checkpoint {checkpoint}" if checkpoint else "nothing to checkpoint yet (a resume starts over)"
    return Outcome(Status.INTERRUPTED, 128 + signum,
                   f"interrupted by {signal.Signals(signum).name} after update {updates}; {kept}",
                   resumable=True, fields={"last_epoch": epoch, "updates": updates, "checkpoint": checkpoint})


def aborted(signum: int, epoch: int) -> Outcome:
    return Outcome(Status.INTERRUPTED, 128 + signum, "aborted; the last checkpoint stands", resumable=True,
                   fields={"last_epoch": epoch})


def diverged(message: str, epoch: int, updates: int) -> Outcome:
    return Outcome(Status.DIVERGED, 1, f"error: {message}", fields={"last_epoch": epoch, "updates": updates,
                                                                     "error": message})


def user_error(message: str, exit_code: int) -> Outcome:
    return Outcome(Status.FAILED, exit_code, f"error: {message}", fields={"error": message})


def lock_lost(message: str) -> Outcome:
    return Outcome(None, 1, f"error: {message}")


@dataclass(frozen=True)
class StopRequest:
    """SIGINT or SIGTERM arrived: finish the step in progress, checkpoint, end the run resumable."""

    signum: int


class Stopped(Exception):
    """The loop stopped for a ``StopRequest``, after writing ``checkpoint``."""

    def __init__(self, checkpoint: str | None) -> None:
        self.checkpoint = checkpoint


class Diverged(RuntimeError):
    """The training loss, the weights or the test loss became NaN or infinite. The step that did it is applied on
    every worker, so nothing after the last checkpoint is worth keeping: no checkpoint is written and the run stops,
    still resumable from the checkpoints it has (exact resumption would diverge again unless something changed)."""

    def __init__(self, what: str, epoch: int, updates: int, global_batch: int, lrs: list[float],
                 checkpoint: str | None) -> None:
        kept = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was written yet"
        lr = f"LR {lrs[0]:.4g}" if len(set(lrs)) == 1 else f"LR {min(lrs):.4g}–{max(lrs):.4g}"
        super().__init__(
            f"training diverged: {what} by update {updates} (epoch {epoch}, global batch {global_batch}, {lr}); "
            f"{kept}. Start a new run with a lower optim.lr, a lower policy.max_global_batch, or "
            f"policy.lr_ramp_epochs > 0 (docs/policy.md)")


def check_finite(stats: Any, epoch: int, updates: int, batch: int, lrs: list[float], checkpoint: str | None) -> None:
    """``Diverged`` if a chunk's loss, or the weights after its last step, are not finite (``updates``: before it)."""
    if math.isfinite(stats.loss_sum) and stats.params_finite:
        return
    what = (f"the training loss became {stats.loss_sum / max(stats.samples, 1)}" if not math.isfinite(stats.loss_sum)
            else "the weights became NaN or infinite")
    raise Diverged(what, epoch, updates + stats.steps, batch, lrs[:stats.steps], checkpoint)


def summary_line(summary: dict[str, Any], run_path: Path) -> str:
    from absa_cli.run.metrics import fmt

    return (f"summary: {summary['epochs']} epochs, {summary['updates']} updates, final batch "
            f"{summary['final_global_batch_size']}, final test acc {fmt(summary['final_test_acc'], '.4f')} "
            f"(best {fmt(summary['best_test_acc'], '.4f')}), {summary['wall_s']:.1f} s; run directory {run_path}")
