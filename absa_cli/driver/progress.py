"""Where training stands, independent of the number of workers: what every checkpoint carries beside the model."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from absa_cli.decide.throughput import PHASES


@dataclass
class EpochTotals:
    """The epoch in progress so far (mid-epoch checkpoints carry it, so a resumed epoch's record is whole)."""

    loss_sum: float = 0.0
    num_correct: int = 0
    samples: int = 0
    lr: float = 0.0
    geometries: list[dict[str, int]] = field(default_factory=list)  # each geometry the epoch ran with, and its steps

    def add(self, stats: Any, lr: float, geometry: Any) -> None:
        """A chunk's reduced statistics; ``lr``: the LR of its last applied step; ``geometry``: what it ran on."""
        self.loss_sum += stats.loss_sum
        self.num_correct += stats.num_correct
        self.samples += stats.samples
        self.lr = lr
        self.count_steps(geometry, stats.steps)
        phases = getattr(stats, "phase_s", ())
        if phases and stats.steps:  # the time of whole chunks only (a failed chunk's steps are counted untimed)
            entry = self.geometries[-1]
            timed = entry.setdefault("timed", {"steps": 0, "wall_s": 0.0, **dict.fromkeys(PHASES, 0.0)})
            timed["steps"] += stats.steps
            timed["wall_s"] += stats.seconds
            for phase, seconds in zip(PHASES, phases):
                timed[phase] += seconds

    def add_interrupted(self, failure: Any, geometry: Any) -> None:
        """The steps a chunk applied before workers were lost (``Failure``, from a survivor): in the loss and
        accuracy as any chunk's are (each step one global batch), in the step counts untimed."""
        self.loss_sum += failure.loss_sum
        self.num_correct += failure.num_correct
        self.samples += failure.steps_done * geometry.global_batch_size
        self.count_steps(geometry, failure.steps_done)

    def count_steps(self, geometry: Any, steps: int) -> None:
        """``steps`` applied on ``geometry`` (a chunk's, or those a failed chunk applied before the loss)."""
        shape = {"num_workers": geometry.num_workers, "per_worker_batch_size": geometry.per_worker_batch_size,
                 "grad_accum_steps": geometry.grad_accum_steps}
        if self.geometries and {k: self.geometries[-1][k] for k in shape} == shape:
            self.geometries[-1]["steps"] += steps
        elif steps:
            self.geometries.append({**shape, "steps": steps})


@dataclass
class Progress:
    """Where training stands, independent of the number of workers."""

    epoch: int = 0  # the epoch in progress, 0-based (records show it 1-based)
    samples_seen: int = 0  # position inside the epoch's permutation
    updates: int = 0  # optimizer steps so far
    best_test_acc: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)  # geometry changes
    resizes: list[dict[str, Any]] = field(default_factory=list)  # live resizes and failures, as recorded
    totals: EpochTotals = field(default_factory=EpochTotals)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Progress":
        return cls(epoch=int(data["epoch"]), samples_seen=int(data["samples_seen"]), updates=int(data["updates"]),
                   best_test_acc=float(data["best_test_acc"]), history=list(data["history"]),
                   resizes=list(data.get("resizes", [])), totals=EpochTotals(**data.get("totals", {})))

    def next_epoch(self, test_acc: float) -> None:
        """The epoch in progress is done."""
        self.best_test_acc = max(self.best_test_acc, test_acc)
        self.epoch += 1
        self.samples_seen = 0
        self.totals = EpochTotals()
