"""A scripted worker group: the driver's contract (``absa_cli/driver/contract.py``) in process, no torch training.

Tests tell it what the cluster does — lose workers at the n-th call of a method, lose the whole group, offer less
capacity than the driver asks for, gain capacity later, deliver a stop request while a given call runs — and read
back what the driver did: every call in order, and every global-batch span applied per epoch (kept in the state,
so a restart from a checkpoint rewinds it as it rewinds the model). A run on it takes milliseconds, so every
recovery, restart, shortfall and stop path of the controller is tested without Ray; the real-Ray SIGKILL tests in
test_cluster.py stay as the end-to-end proof.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from absa_cli.decide.geometry import BatchGeometry
from absa_cli.driver.contract import (Failure, GroupLost, Resized, ResizeResult, Shortfall, Unchanged,
                                      WorkerFailure)

NUM_PARAMETERS = 1_234  # what the scripted workers say their model has (written to run.json each epoch)


@dataclass(frozen=True)
class Lose:
    """Lose ``workers`` during the call (``steps_done`` steps of a chunk applied first); the survivors re-form."""

    workers: int = 1
    steps_done: int = 0


@dataclass(frozen=True)
class LoseAll:
    """No live re-form is possible (``GroupLost``)."""

    reason: str = "scripted: the group was lost"


@dataclass(frozen=True)
class NoRoom:
    """``resize`` cannot start the newcomers (``Shortfall``)."""

    reason: str = "scripted: no room for the newcomers"


@dataclass
class Stats:  # what the controller reads of ChunkStats / EvalStats / ProbeStats
    steps: int = 0
    samples: int = 0
    loss_sum: float = 0.0
    num_correct: int = 0
    seconds: float = 0.0
    params_finite: bool = True
    loss: float = 0.5
    accuracy: float = 0.5
    fgsm_accuracy: float | None = None
    eigenvalue: float = 1.0
    hvp_count: int = 1
    converged: bool = True


@dataclass
class ScriptedGroup:
    num_train_samples: int = 256
    files: str | None = None  # the training set's digest of its files (ImageDataset.identity)
    offered: int = 1  # the cluster's capacity: what ``capacity()`` reports
    events: dict[tuple[str, int], Any] = field(default_factory=dict)  # (method, n-th call) → Lose | LoseAll | NoRoom
    # probe readings per epoch, the last one repeated; a tuple: the probe's, then its rechecks' (policy.recheck)
    eigenvalues: list[float | tuple[float, ...]] = field(default_factory=lambda: [8.0])
    hooks: dict[tuple[str, int], Callable[["ScriptedGroup"], None]] = field(default_factory=dict)  # run on the call
    train_loss: float = 1.0  # per sample; math.nan makes the chunk diverge
    drift: float = 0.0  # loss and accuracy of a step grow with its position in the epoch by this much (0: flat)
    num_workers: int = 0
    calls: list[tuple[str, Any]] = field(default_factory=list)
    applied: list[list[int]] = field(default_factory=list)  # [epoch, start, stop] of every applied step
    prepared: list[int] = field(default_factory=list)
    demanded: list[int] = field(default_factory=list)  # every request to the autoscaler (0: withdrawn)
    start_limits: list[float | None] = field(default_factory=list)  # each resize's ``within_s``
    stop_requested: bool = False
    _counts: Counter = field(default_factory=Counter)

    def _call(self, method: str, detail: Any = None) -> Any:
        self._counts[method] += 1
        self.calls.append((method, detail))
        hook = self.hooks.get((method, self._counts[method]))
        if hook is not None:
            hook(self)
        event = self.events.get((method, self._counts[method]))
        if isinstance(event, LoseAll):
            raise GroupLost(event.reason)
        return event

    def _lose(self, event: Lose, epoch: int, samples_seen: int, steps_done: int = 0,
              sums: tuple[float, int] = (0.0, 0)) -> WorkerFailure:
        """``sums``: the loss and correct predictions of the ``steps_done`` steps, as survivors report them."""
        survivors = self.num_workers - event.workers
        if survivors < 1:
            return GroupLost(f"scripted: all {self.num_workers} workers lost")
        lost = tuple(f"rank {rank}, pid 100{rank} on node scripted" for rank in range(survivors, self.num_workers))
        failure = Failure(epoch, samples_seen, steps_done, from_workers=self.num_workers, lost_workers=event.workers,
                          to_workers=survivors, error="scripted: worker lost", recovery_s=0.0, lost=lost,
                          loss_sum=sums[0], num_correct=sums[1])
        self.num_workers = survivors
        return WorkerFailure(failure)

    # ---------------------------------------------------------------------------------- the contract

    @property
    def training_set(self) -> dict[str, Any]:
        return {"samples": self.num_train_samples, "files": self.files}

    def capacity(self) -> int:
        return max(self.offered, self.num_workers)

    def describe_capacity(self) -> str:
        return f"the scripted cluster offers {self.offered}"

    def name(self, run_id: str) -> None:
        self.calls.append(("name", run_id))

    def report_to(self, say: Any) -> None:
        self.calls.append(("report_to", say))

    def prepare(self, num_workers: int) -> None:
        self.prepared.append(num_workers)

    def record_sink(self, run_id: str) -> None:
        return None

    def demand(self, num_workers: int) -> bool:
        self.demanded.append(num_workers)
        return True

    def notices(self) -> list[str]:
        return []

    def devices(self) -> list[str]:
        return ["scripted"]

    def num_parameters(self) -> int:
        return NUM_PARAMETERS

    def resize(self, num_workers: int, within_s: float | None = None) -> ResizeResult:
        self.start_limits.append(within_s)
        event = self._call("resize", num_workers)
        old = self.num_workers
        if num_workers == old:
            return Unchanged(old)
        if isinstance(event, NoRoom) or num_workers > max(self.offered, old):
            return Shortfall(requested=num_workers, available=old, reason=getattr(event, "reason", "no room"))
        self.num_workers = num_workers
        return Resized(old, num_workers, resize_s=0.001)

    def train_chunk(self, epoch: int, samples_seen: int, lrs: list[float], geometry: BatchGeometry,
                    adv_ratio: float = 0.0) -> Stats:
        event = self._call("train_chunk", (epoch, samples_seen, len(lrs), geometry.num_workers))
        assert geometry.num_workers == self.num_workers, (geometry, self.num_workers)
        assert all(math.isfinite(lr) and lr > 0 for lr in lrs), lrs
        batch = geometry.global_batch_size
        if isinstance(event, Lose):
            sums = self._apply(epoch, samples_seen, event.steps_done, batch)
            raise self._lose(event, epoch, samples_seen + event.steps_done * batch, event.steps_done, sums)
        steps = 1 if self.stop_requested else len(lrs)  # a stop request: after the step in progress
        assert samples_seen + steps * batch <= self.num_train_samples, "a step past the epoch's last full batch"
        loss_sum, num_correct = self._apply(epoch, samples_seen, steps, batch)
        return Stats(steps=steps, samples=steps * batch, loss_sum=loss_sum, num_correct=num_correct)

    def _apply(self, epoch: int, samples_seen: int, steps: int, batch: int) -> tuple[float, int]:
        """Apply ``steps`` steps from ``samples_seen``: their loss sum and correct predictions."""
        loss_sum, num_correct = 0.0, 0
        for step in range(steps):
            start = samples_seen + step * batch
            self.applied.append([epoch, start, start + batch])
            along = self.drift * start / self.num_train_samples
            loss_sum += self.train_loss * (1 + along) * batch
            num_correct += int(batch * (0.5 + along / 4))
        return loss_sum, num_correct

    def _position(self) -> tuple[int, int]:
        """Where the last applied step left the training (what survivors report at a boundary call)."""
        return (self.applied[-1][0], self.applied[-1][2]) if self.applied else (0, 0)

    def evaluate(self) -> Stats:
        event = self._call("evaluate")
        if isinstance(event, Lose):
            raise self._lose(event, *self._position())
        return Stats()

    def probe(self, epoch: int, draw: int = 0) -> Stats:
        event = self._call("probe", (epoch, draw) if draw else epoch)
        if isinstance(event, Lose):
            raise self._lose(event, *self._position())
        readings = self.eigenvalues[min(epoch, len(self.eigenvalues) - 1)]
        return Stats(eigenvalue=readings[draw] if isinstance(readings, tuple) else readings)

    def state_dict(self) -> dict:
        event = self._call("state_dict")
        if isinstance(event, Lose):
            raise self._lose(event, *self._position())
        return {"model": {"steps": torch.tensor(len(self.applied))}, "applied": [list(a) for a in self.applied]}

    def restart(self, state: dict | None) -> None:
        self._call("restart")
        self.num_workers = 0  # the next resize starts the new group
        self.applied = [list(a) for a in state["applied"]] if state is not None else []

    def request_stop(self) -> None:
        self.stop_requested = True

    def close(self) -> None:
        self.num_workers = 0

    # ----------------------------------------------------------------------------------------- reading

    def methods(self) -> list[str]:
        return [method for method, _ in self.calls]

    def positions(self, epoch: int) -> list[int]:
        """Every sample position applied in ``epoch`` (0-based), in order."""
        return [p for e, start, stop in self.applied if e == epoch for p in range(start, stop)]
