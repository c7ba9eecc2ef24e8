"""The epoch loop: the one place that acts (driver side).

The controller talks to a worker *group* through a narrow interface (``train_chunk``, ``sync_buffers``,
``evaluate``, ``probe``, ``state_dict``), so the in-process ``LocalGroup`` and the Ray worker group run the same
loop. It imports neither torch nor ray at module load (checkpoint writing imports torch lazily).

Each epoch: plan the geometry for the policy's global batch, run chunks of steps (progress after each), average
BatchNorm statistics, evaluate, probe the curvature if the policy asked for it, hand the measurements to the policy
(its decision applies from the next epoch), write the epoch record, checkpoint.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from absa_cli.config import RunConfig
from absa_cli.geometry import BatchGeometry, steps_in_epoch
from absa_cli.metrics import Console, JsonlSink
from absa_cli.policy import Decision, EpochMeasurements, make_policy
from absa_cli.runs import RunDir


class WorkerFailure(Exception):
    """Workers were lost mid-chunk. The group has already re-formed with the survivors (and replacements);
    ``samples_seen`` is where the last applied step left the epoch and ``steps_done`` how many steps of the failed
    chunk were applied."""

    def __init__(self, record: dict[str, Any], samples_seen: int, steps_done: int) -> None:
        super().__init__(record["error"])
        self.record = record
        self.samples_seen = samples_seen
        self.steps_done = steps_done


MAX_RESTARTS = 3  # restarts from a checkpoint per run before giving up (a deterministic failure must not loop)


class GroupLost(RuntimeError):
    """The group cannot continue live (every worker lost, or a re-form failed): restart from the last checkpoint."""


class WorkerGroup(Protocol):
    num_workers: int
    num_train_samples: int

    def capacity(self) -> int: ...
    def resize(self, num_workers: int) -> dict[str, Any] | None: ...
    def train_chunk(self, epoch: int, samples_seen: int, lrs: list[float], geometry: BatchGeometry,
                    adv_ratio: float = 0.0) -> Any: ...
    def sync_buffers(self) -> None: ...
    def evaluate(self) -> Any: ...
    def probe(self) -> Any: ...
    def state_dict(self) -> dict: ...
    def close(self) -> None: ...


@dataclass
class Progress:
    """Where training stands, independent of the number of workers."""

    epoch: int = 0  # the epoch in progress, 0-based (records show it 1-based)
    samples_seen: int = 0  # position inside the epoch's permutation
    updates: int = 0  # optimizer steps so far
    best_test_acc: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)  # geometry changes


@dataclass
class _EpochTotals:
    loss_sum: float = 0.0
    num_correct: int = 0
    samples: int = 0
    lr: float = 0.0


class Controller:
    def __init__(self, config: RunConfig, run: RunDir, group: WorkerGroup, console: Console,
                 max_workers: int = 1) -> None:
        self.config = config
        self.run = run
        self.group = group
        self.console = console
        self.max_workers = max_workers
        self.sink = JsonlSink(run.metrics_path)
        self.progress = Progress()
        self.policy = make_policy(config)
        self.decision: Decision = self.policy.initial()
        self.last_record: dict[str, Any] | None = None

    def plan_geometry(self, available: int | None = None) -> BatchGeometry:
        """The geometry for the policy's batch on the workers available (the group's capacity by default)."""
        available = self.group.capacity() if available is None else available
        geometry = BatchGeometry.plan(self.decision.global_batch_size, self.max_workers,
                                      self.config.batch.per_worker_max, available_workers=available)
        shape = dataclasses.asdict(geometry)  # global batch, workers, per-worker batch, accumulation
        last = self.progress.history[-1] if self.progress.history else {}
        if {key: last.get(key) for key in shape} != shape:  # log at the start and on every change
            current = {"epoch": self.progress.epoch + 1, **shape}
            self.progress.history.append(current)
            self.sink.write({"kind": "geometry", **current})
            self.console.line(f"[bold]geometry[/]: {geometry.describe()}")
        return geometry

    def run_all(self) -> dict[str, Any]:
        started = time.perf_counter()
        self.console.line(f"[bold]policy[/] {self.config.policy.name}: {self.decision.reason}")
        restarts = 0
        while self.progress.epoch < self.config.epochs:
            try:
                self.last_record = self.run_epoch()
            except GroupLost as lost:
                restarts += 1
                if restarts > MAX_RESTARTS:
                    raise RuntimeError(f"the worker group was lost {restarts} times; last: {lost}") from lost
                self.restart_from_checkpoint(str(lost))
        return {"epochs": self.config.epochs, "updates": self.progress.updates,
                "final_test_acc": self.last_record["test_acc"] if self.last_record else None,
                "best_test_acc": self.progress.best_test_acc,
                "final_global_batch_size": self.decision.global_batch_size,
                "wall_s": time.perf_counter() - started}

    def run_epoch(self) -> dict[str, Any]:
        config, progress, decision = self.config, self.progress, self.decision
        epoch_started = time.perf_counter()
        geometry, resize = self._resize_for(self.plan_geometry())
        self._prepare_next_growth()
        totals = self._train_epoch(geometry, decision.adv_ratio, resize)
        self._recovering(self.group.sync_buffers)
        evaluation = self._recovering(self.group.evaluate)
        probe = self._recovering(self.group.probe) if decision.probe_next else None
        self.decision = self.policy.observe(EpochMeasurements(
            epoch=progress.epoch + 1, num_epochs=config.epochs, eigenvalue=probe.eigenvalue if probe else None,
            updates=progress.updates, train_loss=totals.loss_sum / max(totals.samples, 1),
            test_acc=evaluation.accuracy))
        record = {
            "kind": "epoch", "epoch": progress.epoch + 1, "updates": progress.updates,
            "samples_seen": progress.samples_seen, "global_batch_size": geometry.global_batch_size,
            "num_workers": geometry.num_workers, "grad_accum_steps": geometry.grad_accum_steps, "lr": totals.lr,
            "adv_ratio": decision.adv_ratio,
            "train_loss": totals.loss_sum / max(totals.samples, 1),
            "train_acc": totals.num_correct / max(totals.samples, 1),
            "test_loss": evaluation.loss, "test_acc": evaluation.accuracy,
            "eigenvalue": probe.eigenvalue if probe else None,
            "probe_hvps": probe.hvp_count if probe else 0, "probe_s": probe.seconds if probe else 0.0,
            "policy_reason": self.decision.reason, "resize_s": resize["resize_s"] if resize else 0.0,
            "epoch_s": time.perf_counter() - epoch_started,
        }
        if evaluation.fgsm_accuracy is not None:
            record["test_acc_fgsm"] = evaluation.fgsm_accuracy
        progress.best_test_acc = max(progress.best_test_acc, evaluation.accuracy)
        progress.epoch += 1
        progress.samples_seen = 0
        self.sink.write(record)
        self.console.epoch_done(record)
        if progress.epoch % config.checkpoint.every_epochs == 0 or progress.epoch == config.epochs:
            self.save_checkpoint()
        self.run.write_info(last_epoch=progress.epoch, updates=progress.updates,
                            best_test_acc=progress.best_test_acc)
        return record

    def _prepare_next_growth(self) -> None:
        """If the policy may grow the batch at this epoch's end, let the group start the workers it would need."""
        prepare = getattr(self.group, "prepare", None)
        if prepare is None or self.config.policy.name not in ("absa", "abs"):
            return
        batch = min(self.decision.global_batch_size * self.config.policy.growth, self.config.policy.max_global_batch)
        if batch > self.decision.global_batch_size:
            prepare(BatchGeometry.plan(batch, self.max_workers, self.config.batch.per_worker_max).num_workers)

    def _resize_for(self, geometry: BatchGeometry) -> tuple[BatchGeometry, dict[str, Any] | None]:
        """Bring the group to the geometry's worker count (live); re-plan if the cluster gave fewer."""
        resize = self.group.resize(geometry.num_workers)
        if self.group.num_workers != geometry.num_workers:
            self.console.line(f"[yellow]cluster[/]: asked for {geometry.num_workers} workers, have "
                              f"{self.group.num_workers}; accumulation keeps the global batch exact")
            geometry, shrink = self._fit_group()
            resize = shrink or resize
        return geometry, resize

    def _fit_group(self) -> tuple[BatchGeometry, dict[str, Any] | None]:
        """Re-plan for the workers the group has; the plan may use fewer (a divisor of the global batch), and
        then the group shrinks to it — never a grow, so it needs no new actors."""
        geometry = self.plan_geometry(available=self.group.num_workers)
        return geometry, self.group.resize(geometry.num_workers)

    def _train_epoch(self, geometry: BatchGeometry, adv_ratio: float,
                     resize: dict[str, Any] | None) -> _EpochTotals:
        """Chunks of ``logging.chunk_steps`` steps from ``samples_seen`` to the end of the epoch.

        After a resize the first chunk is a single step, timed into the resize record (``first_step_s``). A lost
        worker ends a chunk early: the group has re-formed, the failure is recorded, and the epoch continues from
        the exact sample where the last applied step stopped.
        """
        progress, num_samples = self.progress, self.group.num_train_samples
        totals = _EpochTotals()
        self.console.epoch_started(progress.epoch + 1, self.config.epochs,
                                   steps_in_epoch(num_samples, geometry.global_batch_size), geometry.describe())
        while progress.samples_seen < num_samples:
            batch = geometry.global_batch_size
            num_steps = steps_in_epoch(num_samples, batch)
            steps_left = steps_in_epoch(num_samples - progress.samples_seen, batch)
            count = 1 if resize is not None else min(self.config.logging.chunk_steps, steps_left)
            lrs = [self.policy.lr(progress.epoch + (progress.samples_seen + i * batch) / num_samples,
                                  progress.updates + i) for i in range(count)]
            try:
                stats = self.group.train_chunk(progress.epoch, progress.samples_seen, lrs, geometry, adv_ratio)
            except WorkerFailure as failure:
                progress.samples_seen = failure.samples_seen
                progress.updates += failure.steps_done
                self._report(failure)
                geometry, _ = self._fit_group()
                continue
            if resize is not None:
                resize = {**resize, "epoch": progress.epoch + 1, "first_step_s": stats.seconds}
                self.sink.write(resize)
                self.console.line(f"[bold]resize[/]: {resize['from_workers']} → {resize['to_workers']} workers "
                                  f"live in {resize['resize_s']:.2f} s (first step {stats.seconds:.2f} s)")
                resize = None
            progress.samples_seen += stats.samples
            progress.updates += stats.steps
            totals.loss_sum += stats.loss_sum
            totals.num_correct += stats.num_correct
            totals.samples += stats.samples
            totals.lr = lrs[-1]
            self.console.chunk_done(num_steps - (steps_left - count), num_steps,
                                    stats.samples / max(stats.seconds, 1e-9), stats.loss_sum / max(stats.samples, 1))
        return totals

    def _report(self, failure: WorkerFailure) -> None:
        self.sink.write(failure.record)
        self.console.line(f"[red]failure[/]: lost {failure.record['lost_workers']} worker(s) "
                          f"({failure.record['error']}); continuing on {self.group.num_workers} from "
                          f"sample {failure.samples_seen} of epoch {self.progress.epoch + 1}")

    def _recovering(self, call: Any, attempts: int = 3) -> Any:
        """An epoch-boundary call (BN sync, evaluation, probe, state) retried on the re-formed group if a worker
        is lost during it; nothing of the epoch's training is lost, since every step was already applied."""
        for _ in range(attempts - 1):
            try:
                return call()
            except WorkerFailure as failure:
                self._report(failure)
        return call()

    def restart_from_checkpoint(self, why: str) -> None:
        """The fallback when a live re-form is impossible: a new group from the newest checkpoint on disk."""
        from absa_cli import checkpoint  # torch import, only on this rare path

        saved = self.run.checkpoints()
        if not saved:
            raise RuntimeError(f"the worker group was lost ({why}) before any checkpoint was written")
        state = checkpoint.load(saved[-1])
        self.progress = Progress(epoch=state["epoch"], samples_seen=state["samples_seen"], updates=state["updates"],
                                 best_test_acc=state["best_test_acc"], history=list(state["history"]))
        self.policy.load_state_dict(state["policy"])
        restored = self.policy.state
        self.decision = Decision(global_batch_size=restored.global_batch_size, adv_ratio=restored.adv_ratio,
                                 probe_next=restored.probe_next, grew=False,
                                 reason=f"restored from {saved[-1].name}")
        geometry = self.plan_geometry()
        self.group.restart(geometry.num_workers, state)
        record = {"kind": "restart", "epoch": self.progress.epoch + 1, "checkpoint": saved[-1].name,
                  "num_workers": self.group.num_workers, "reason": why}
        self.sink.write(record)
        self.console.line(f"[red]restart[/]: live re-form impossible ({why}); restarted "
                          f"{self.group.num_workers} worker(s) from {saved[-1].name}")

    def save_checkpoint(self) -> None:
        from absa_cli import checkpoint  # torch import, only on the driver paths that write checkpoints

        state = {**self._recovering(self.group.state_dict), "epoch": self.progress.epoch,
                 "samples_seen": self.progress.samples_seen, "updates": self.progress.updates,
                 "best_test_acc": self.progress.best_test_acc, "history": self.progress.history,
                 "policy": self.policy.state_dict(), "preset": self.config.preset}
        checkpoint.save(self.run.checkpoint_path(self.progress.epoch), state)
        for old in self.run.checkpoints()[:-self.config.checkpoint.keep_last]:
            old.unlink()
