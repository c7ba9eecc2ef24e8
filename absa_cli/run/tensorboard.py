"""TensorBoard event files beside ``metrics.jsonl`` when ``logging.tensorboard=true`` (run/: torch, lazily).

``metrics.jsonl`` stays the record of a run; this sink only mirrors its numbers so TensorBoard can show runs live
and side by side. Steps are cumulative SGD updates, the axis on which ABSA's saving shows (as in `absa plot`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from absa_cli.errors import UserError

_MISSING = ("logging.tensorboard=true needs tensorboard; install it with pip install 'absa-train[tensorboard]' "
            "or set logging.tensorboard=false")


def check_available() -> None:
    """Fail before training starts, not at the end of the first epoch, when the tensorboard package is missing."""
    _summary_writer()


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(_MISSING) from None
    return SummaryWriter


class TensorBoardSink:
    """Takes the records ``JsonlSink`` takes: epoch → ``epoch/<field>``, resize → ``resize/<field>_s``,
    failure → ``failure/recovery_s``; other kinds and non-numeric fields are not scalars and are left out.

    A ``resume`` or ``restart`` record (written after a checkpoint is restored, with its update count U) starts a
    new event file with ``purge_step`` U + 1: TensorBoard then hides what was logged after the checkpoint, which the
    run logs again (as ``metrics.jsonl`` moves those records to ``metrics.superseded.jsonl``).
    """

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = str(log_dir)
        self._writer_class = _summary_writer()  # a missing package fails here, before training
        self._writer = None  # made at the first scalar or resume: a resumed run's writer needs its purge step
        self._updates = 0  # a resize or failure has no update count of its own: it happens after the last epoch's

    def _open(self, purge_step: int | None = None):
        if self._writer is not None:
            self._writer.close()
        self._writer = self._writer_class(log_dir=self._log_dir, purge_step=purge_step)
        return self._writer

    def write(self, record: dict[str, Any]) -> None:
        kind = record.get("kind")
        if kind in ("resume", "restart"):
            if "updates" in record:
                self._updates = int(record["updates"])
                self._open(purge_step=self._updates + 1)
            return
        if kind == "epoch":
            self._updates = record["updates"]
            scalars = {f"epoch/{key}": value for key, value in record.items()}
        elif kind == "resize":
            scalars = {f"resize/{key}": value for key, value in record.items() if key.endswith("_s")}
        elif kind == "failure":
            scalars = {"failure/recovery_s": record.get("recovery_s")}
        else:
            return
        writer = self._writer or self._open()
        for tag, value in scalars.items():
            if _is_number(value):
                writer.add_scalar(tag, value, global_step=self._updates)
        writer.flush()  # a few records per epoch: TensorBoard shows each now, not flush_secs later

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
