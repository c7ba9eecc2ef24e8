"""The exactly-once audit (``logging.sample_log_dir``): every worker appends the samples of every step it applied,
and the tail each epoch dropped, one JSON line each.

A step's line carries this worker's share and the whole global batch: a peer killed after the step's all-reduce but
before its own write still contributed to the step, and the survivors' lines cover it. The dropped tail is written
by every rank, so it survives the loss of any of them. Reading all workers' files, every sample of every epoch is
either in one applied step or in that epoch's dropped tail, once (tests/test_cluster.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from absa_cli.dist import DistContext


class SampleAudit:
    def __init__(self, path: Path) -> None:
        """Append to ``path``, making its folder (the driver checked it can be written; a worker on another node
        makes it there)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.file = Path(path).open("a")

    def applied(self, epoch: int, start: int, ctx: DistContext, indices: torch.Tensor) -> None:
        """A step applied at positions ``start`` … of ``epoch``: its global batch ``indices``."""
        self._write({"epoch": epoch, "start": start, "rank": ctx.rank, "world_size": ctx.world_size,
                     "samples": ctx.shard(indices).tolist(), "batch": indices.tolist()})

    def dropped(self, epoch: int, start: int, ctx: DistContext, indices: torch.Tensor) -> None:
        """The epoch's tail from position ``start`` on, after the step before it was applied."""
        self._write({"epoch": epoch, "start": start, "rank": ctx.rank, "dropped": indices.tolist()})

    def _write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()
