"""How a run ends: one ``Outcome`` value instead of an exception per ending.

``Controller.train`` returns one; ``cli/driver.py`` writes its status to ``run.json``, prints its message and exits
with its code. The endings, with the status each leaves (``run.rundir.Status``, the one vocabulary of statuses):

| ending | status | exit code | stream |
|---|---|---|---|
| finished | finished | 0 | the summary on stdout |
| stopped by SIGINT/SIGTERM after the step in progress, with a checkpoint | interrupted | 128 + signal | stderr |
| aborted by a second signal (the last checkpoint, if any, stands) | interrupted | 128 + signal | stderr |
| diverged (a non-finite loss or weights), or collapsed (``decide/collapse.py``) | diverged | 1 | stderr |
| a resume refused before it restored anything (no usable checkpoint) | as before the resume | 2 | stderr |
| a user error found while running (e.g. a damaged checkpoint manifest) | failed | 2 | stderr |
| the lock was taken over by another driver | unchanged (the run is the other driver's) | 1 | stderr |
| the worker group lost more often than a run restarts (a failure that repeats) | failed | 1 | stderr |

An internal error is not an outcome: the run is marked failed (still resumable) and its traceback stays.
"""

from __future__ import annotations

import math
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from absa_cli import catalog
from absa_cli.config import RunConfig
from absa_cli.decide.collapse import check_collapse
from absa_cli.decide.policy import ADAPTIVE_POLICIES
from absa_cli.errors import counted
from absa_cli.run.rundir import Status


@dataclass(frozen=True)
class Outcome:
    status: Status | None  # run.json's status afterwards; None: leave run.json alone (another driver owns the run)
    exit_code: int
    message: str  # one line
    resumable: bool = False  # the message goes on with how to resume
    fields: dict[str, Any] = field(default_factory=dict)  # more run.json fields
    summary: dict[str, Any] | None = None  # the finished run's figures
    put_back: bool = False  # status None, and run.json's fields as the refused resume found them

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


def aborted(signum: int, epoch: int, kept: str) -> Outcome:
    """``kept``: what is left to resume from, in words (``Checkpoints.kept``)."""
    return Outcome(Status.INTERRUPTED, 128 + signum, f"aborted; {kept}", resumable=True, fields={"last_epoch": epoch})


def diverged(message: str, epoch: int, updates: int) -> Outcome:
    return Outcome(Status.DIVERGED, 1, f"error: {message}", fields={"last_epoch": epoch, "updates": updates,
                                                                     "error": message})


def user_error(message: str, exit_code: int) -> Outcome:
    return Outcome(Status.FAILED, exit_code, f"error: {message}", fields={"error": message})


def refused(message: str, exit_code: int) -> Outcome:
    """A resume that could not restore the run: nothing ran, so nothing about the run changes."""
    return Outcome(None, exit_code, f"error: {message}", put_back=True)


def lock_lost(message: str) -> Outcome:
    return Outcome(None, 1, f"error: {message}")


def gave_up(message: str, epoch: int, updates: int) -> Outcome:
    return Outcome(Status.FAILED, 1, f"error: {message}", resumable=True,
                   fields={"last_epoch": epoch, "updates": updates, "error": message})


@dataclass(frozen=True)
class StopRequest:
    """SIGINT or SIGTERM arrived: finish the step in progress, checkpoint, end the run resumable."""

    signum: int


class Stopped(Exception):
    """The loop stopped for a ``StopRequest``, after writing ``checkpoint``."""

    def __init__(self, checkpoint: str | None) -> None:
        self.checkpoint = checkpoint


class GaveUp(RuntimeError):
    """The worker group was lost again and again: restarting once more would most likely fail the same way (a
    worker that runs out of memory, a node that keeps dying). The run ends resumable from its checkpoints."""


def advice(config: RunConfig | None = None) -> str:
    """What to change after a divergence or a collapse, for the run's policy: the cap and a ramp after growths only
    where the batch grows (abs, absa) or is the cap (fixed-large), and a ramp only where the run sets none (one that
    sets it blew up anyway; the measured collapses came epochs after a growth, docs/benchmarks.md)."""
    name, ramp = (config.policy.name, config.policy.lr_ramp_epochs) if config is not None else ("absa", 0)
    if name == "fixed":
        return "Start a new run with a lower optim.lr (docs/policy.md)"
    if name not in ADAPTIVE_POLICIES:
        return "Start a new run with a lower optim.lr or a lower policy.max_global_batch (docs/policy.md)"
    if ramp > 0:
        return ("Start a new run with a lower optim.lr or a lower policy.max_global_batch (docs/policy.md; this run "
                f"sets policy.lr_ramp_epochs={ramp:g} already)")
    return ("Start a new run with a lower optim.lr, a lower policy.max_global_batch, or policy.lr_ramp_epochs > 0 "
            "(docs/policy.md)")


class Diverged(RuntimeError):
    """The training loss, the weights or the test loss became NaN or infinite. The step that did it is applied on
    every worker, so nothing after the last checkpoint is worth keeping: no checkpoint is written and the run stops,
    still resumable from the checkpoints it has (exact resumption would diverge again unless something changed)."""

    def __init__(self, what: str, epoch: int, updates: int, global_batch: int, lrs: list[float],
                 checkpoint: str | None, fix: str | None = None) -> None:
        lr = f"LR {lrs[0]:.4g}" if len(set(lrs)) == 1 else f"LR {min(lrs):.4g}–{max(lrs):.4g}"
        super().__init__(f"training diverged: {what} by update {updates} (epoch {epoch}, global batch {global_batch}, "
                         f"{lr}); {_kept(checkpoint)}. {fix or advice()}")


class Collapsed(Diverged):
    """The run collapsed without a NaN (``decide/collapse.py``): its loss blew up to finite values, or its accuracy
    fell back to chance. It ends as a divergence does, for the same reasons: the epoch that showed it is not worth a
    checkpoint (nor a record), and resuming unchanged would collapse again; the message says what to change."""

    def __init__(self, what: str, epoch: int, updates: int, global_batch: int, lr: float,
                 checkpoint: str | None, fix: str | None = None) -> None:
        RuntimeError.__init__(  # Diverged's own message says "diverged" and names the update first
            self, f"training collapsed in epoch {epoch}: {what}; update {updates}, global batch {global_batch}, "
                  f"LR {lr:.4g}; {_kept(checkpoint)}. {fix or advice()}, or train on regardless with "
                  "policy.stop_on_collapse=false")


def _kept(checkpoint: str | None) -> str:
    return f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was written yet"


def check_finite(stats: Any, epoch: int, updates: int, batch: int, lrs: list[float], checkpoint: str | None,
                 config: RunConfig | None = None) -> None:
    """``Diverged`` if a chunk's loss, or the weights after its last step, are not finite (``updates``: before it);
    the advice fits ``config``'s policy."""
    if math.isfinite(stats.loss_sum) and stats.params_finite:
        return
    what = (f"the training loss became {stats.loss_sum / max(stats.samples, 1)}" if not math.isfinite(stats.loss_sum)
            else "the weights became NaN or infinite")
    raise Diverged(what, epoch, updates + stats.steps, batch, lrs[:stats.steps], checkpoint, advice(config))


def check_collapsed(config: RunConfig, progress: Any, totals: Any, test_acc: float, batch: int,
                    checkpoint: str | None) -> None:
    """``Collapsed`` if the epoch in progress, trained (``totals``) and evaluated (``test_acc``), shows a collapse
    against the epochs before it (``progress``), unless ``policy.stop_on_collapse`` is off."""
    if not config.policy.stop_on_collapse:
        return
    collapse = check_collapse(catalog.DATASETS[config.data.name].num_classes, totals.loss_sum / max(totals.samples, 1),
                              test_acc, progress.best_test_acc)
    if collapse is not None:
        raise Collapsed(collapse.what, progress.epoch + 1, progress.updates, batch, totals.lr, checkpoint,
                        advice(config))


def summary_line(summary: dict[str, Any], run_path: Path, resumed: bool = False) -> str:
    """The run's figures; its time is this command's (``resumed``: said so, since the run's epochs and updates are
    all of them)."""
    from absa_cli.run.metrics import fmt

    return (f"summary: {counted(summary['epochs'], 'epoch')}, {counted(summary['updates'], 'update')}, final batch "
            f"{summary['final_global_batch_size']}, final test acc {fmt(summary['final_test_acc'], '.4f')} "
            f"(best {fmt(summary['best_test_acc'], '.4f')}), {summary['wall_s']:.1f} s"
            f"{' since the resume' if resumed else ''}; run directory {run_path}")
