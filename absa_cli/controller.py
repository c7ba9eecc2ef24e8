"""The epoch loop: the one place that acts (driver side).

The controller talks to a worker *group* through a narrow interface (``train_chunk``, ``evaluate``, ``probe``,
``state_dict``, ``restart``), so the in-process ``LocalGroup`` and the Ray worker group run the same loop. It
imports neither torch nor ray at module load (checkpoint writing imports torch lazily).

Each epoch: plan the geometry for the policy's global batch, run chunks of steps (progress after each), evaluate,
probe the curvature if the policy asked for it, hand the measurements to the policy (its decision applies from the
next epoch), write the epoch record, checkpoint.

Everything that decides what happens next lives in ``Progress`` and the policy state, and both go into every
checkpoint with the model, so ``resume`` continues from any checkpoint — at an epoch boundary or mid-epoch after a
stop request — exactly as if the run had never stopped, on any number of workers.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from absa_cli.config import RunConfig
from absa_cli.geometry import BatchGeometry, samples_in_epoch, steps_in_epoch
from absa_cli.metrics import Console, FanOut, JsonlSink
from absa_cli.policy import Decision, EpochMeasurements, make_policy
from absa_cli.runs import RunDir, checkpoint_name


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


class StopRequested(Exception):
    """SIGINT or SIGTERM: the step in progress finished, a checkpoint was written, the run stops resumable."""

    def __init__(self, signum: int, checkpoint: str) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} at {checkpoint}")
        self.signum = signum
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


class WorkerGroup(Protocol):
    num_workers: int
    num_train_samples: int

    def capacity(self) -> int: ...
    def resize(self, num_workers: int) -> dict[str, Any] | None: ...
    def train_chunk(self, epoch: int, samples_seen: int, lrs: list[float], geometry: BatchGeometry,
                    adv_ratio: float = 0.0) -> Any: ...
    def evaluate(self) -> Any: ...
    def probe(self, epoch: int) -> Any: ...
    def state_dict(self) -> dict: ...
    def restart(self, num_workers: int, state: dict) -> None: ...
    def request_stop(self) -> None: ...
    def close(self) -> None: ...


@dataclass
class EpochTotals:
    """The epoch in progress so far (mid-epoch checkpoints carry it, so a resumed epoch's record is whole)."""

    loss_sum: float = 0.0
    num_correct: int = 0
    samples: int = 0
    lr: float = 0.0


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


class Controller:
    def __init__(self, config: RunConfig, run: RunDir, group: WorkerGroup, console: Console,
                 max_workers: int = 1) -> None:
        self.config = config
        self.run = run
        self.group = group
        self.console = console
        self.max_workers = max_workers
        self.sink = JsonlSink(run.metrics_path)
        if config.logging.tensorboard:
            from absa_cli.tensorboard import TensorBoardSink  # torch import: only when asked for

            self.sink = FanOut(self.sink, TensorBoardSink(run.path / "tensorboard"))
        self.progress = Progress()
        self.policy = make_policy(config)
        self.decision: Decision = self.policy.initial()
        self.last_record: dict[str, Any] | None = None
        self.stop_signal: int | None = None
        self.lock: Any = None  # the run's RunLock when a CLI driver holds one: checked before every write
        # `updates` at the last checkpoint written or restored; 0: the start needs none (a resume starts over)
        self._saved_at = 0
        self._saved_file: str | None = None  # that checkpoint's file name

    def close(self) -> None:
        self.sink.close()

    def request_stop(self, signum: int) -> None:
        """Called from a signal handler: flags only; the loop stops after the step in progress."""
        self.stop_signal = signum
        self.group.request_stop()

    def _check_stop(self) -> None:
        self._check_lock()
        if self.stop_signal is not None:
            raise StopRequested(self.stop_signal, self.save_checkpoint())

    def _check_lock(self) -> None:
        """``LockLost`` once another driver has taken the run over (``self.lock``, set by the CLI's driver)."""
        if self.lock is not None:
            self.lock.check()

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
        self.console.status(policy=self.decision.reason, updates=self.progress.updates)
        restarts = 0
        while self.progress.epoch < self.config.epochs:
            try:
                self._check_stop()
                self.last_record = self.run_epoch()
            except GroupLost as lost:
                restarts += 1
                if restarts > MAX_RESTARTS:
                    raise RuntimeError(f"the worker group was lost {restarts} times; last: {lost}") from lost
                self.restart_from_checkpoint(str(lost))
        if self.last_record is None:  # resumed from the last epoch's checkpoint: nothing was left to train
            epochs = self.run.records("epoch")
            self.last_record = epochs[-1] if epochs else None
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
        evaluation = self._recovering(self.group.evaluate)
        if not math.isfinite(evaluation.loss):  # e.g. weights that overflow only on the test set's inputs
            raise Diverged(f"the test loss became {evaluation.loss}", progress.epoch + 1, progress.updates,
                           geometry.global_batch_size, [totals.lr], self._saved_file)
        probe = self._recovering(lambda: self.group.probe(progress.epoch)) if decision.probe_next else None
        self.decision = self.policy.observe(EpochMeasurements(
            epoch=progress.epoch + 1, num_epochs=config.epochs, eigenvalue=probe.eigenvalue if probe else None,
            train_loss=totals.loss_sum / max(totals.samples, 1), test_acc=evaluation.accuracy))
        record = {
            "kind": "epoch", "epoch": progress.epoch + 1, "updates": progress.updates,
            "samples_seen": progress.samples_seen,
            "dropped_samples": self.group.num_train_samples - progress.samples_seen,
            "global_batch_size": geometry.global_batch_size,
            "num_workers": geometry.num_workers, "grad_accum_steps": geometry.grad_accum_steps, "lr": totals.lr,
            "adv_ratio": decision.adv_ratio,
            "train_loss": totals.loss_sum / max(totals.samples, 1),
            "train_acc": totals.num_correct / max(totals.samples, 1),
            "test_loss": evaluation.loss, "test_acc": evaluation.accuracy,
            "eigenvalue": probe.eigenvalue if probe else None,
            "probe_hvps": probe.hvp_count if probe else 0, "probe_s": probe.seconds if probe else 0.0,
            "policy_reason": self.decision.reason, "growth": self.decision.growth,
            "growth_epochs_early": self.decision.epochs_early, "resize_s": resize["resize_s"] if resize else 0.0,
            "epoch_s": time.perf_counter() - epoch_started,
        }
        if evaluation.fgsm_accuracy is not None:
            record["test_acc_fgsm"] = evaluation.fgsm_accuracy
        progress.best_test_acc = max(progress.best_test_acc, evaluation.accuracy)
        progress.epoch += 1
        progress.samples_seen = 0
        progress.totals = EpochTotals()
        self._check_lock()
        self.sink.write(record)
        self.console.epoch_done(record)
        if progress.epoch % config.checkpoint.every_epochs == 0 or progress.epoch == config.epochs:
            self.save_checkpoint()
        self.run.write_info(last_epoch=progress.epoch, updates=progress.updates, best_test_acc=progress.best_test_acc,
                            test_acc=evaluation.accuracy, global_batch_size=geometry.global_batch_size,
                            num_workers=geometry.num_workers)
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
                     resize: dict[str, Any] | None) -> EpochTotals:
        """Chunks of ``logging.chunk_steps`` steps from ``samples_seen`` to the end of the epoch: its last full
        global batch (the tail that does not fill one is dropped; the epoch record counts it).

        After a resize the first chunk is a single step, timed into the resize record (``first_step_s``). A lost
        worker ends a chunk early: the group has re-formed, the failure is recorded, and the epoch continues from
        the exact sample where the last applied step stopped.
        """
        progress, num_samples = self.progress, self.group.num_train_samples
        totals = progress.totals  # not empty when resumed mid-epoch
        batch = geometry.global_batch_size  # a failure may change the geometry, never the global batch
        num_steps, epoch_end = steps_in_epoch(num_samples, batch), samples_in_epoch(num_samples, batch)
        self.console.status(adv_ratio=adv_ratio)
        self.console.epoch_started(progress.epoch + 1, self.config.epochs, num_steps, geometry.describe(),
                                   steps_done=progress.samples_seen // batch)
        while progress.samples_seen < epoch_end:
            steps_left = (epoch_end - progress.samples_seen) // batch
            count = 1 if resize is not None else min(self.config.logging.chunk_steps, steps_left)
            lrs = [self.policy.lr(progress.epoch + (progress.samples_seen + i * batch) / num_samples)
                   for i in range(count)]
            try:
                stats = self.group.train_chunk(progress.epoch, progress.samples_seen, lrs, geometry, adv_ratio)
            except WorkerFailure as failure:
                progress.samples_seen = failure.samples_seen
                progress.updates += failure.steps_done
                self._report(failure)
                geometry, _ = self._fit_group()
                self._check_stop()
                continue
            if resize is not None:
                resize = {**resize, "epoch": progress.epoch + 1, "first_step_s": stats.seconds}
                progress.resizes.append(resize)
                self.sink.write(resize)
                self.console.line(f"[bold]resize[/]: {resize['from_workers']} → {resize['to_workers']} workers "
                                  f"live in {resize['resize_s']:.2f} s (first step {stats.seconds:.2f} s)")
                resize = None
            if not math.isfinite(stats.loss_sum) or not stats.params_finite:
                what = (f"the training loss became {stats.loss_sum / max(stats.samples, 1)}"
                        if not math.isfinite(stats.loss_sum) else "the weights became NaN or infinite")
                raise Diverged(what, progress.epoch + 1, progress.updates + stats.steps, batch, lrs[:stats.steps],
                               self._saved_file)
            progress.samples_seen += stats.samples
            progress.updates += stats.steps
            totals.loss_sum += stats.loss_sum
            totals.num_correct += stats.num_correct
            totals.samples += stats.samples
            totals.lr = lrs[stats.steps - 1]  # a stop request may have cut the chunk short
            self.console.chunk_done(num_steps - (steps_left - stats.steps), num_steps,
                                    stats.samples / max(stats.seconds, 1e-9), stats.loss_sum / max(stats.samples, 1),
                                    lr=totals.lr, updates=progress.updates,
                                    train_acc=totals.num_correct / max(totals.samples, 1))
            if progress.samples_seen < epoch_end:  # a stop at the epoch's end finishes the epoch first
                self._check_stop()
        return totals

    def _report(self, failure: WorkerFailure) -> None:
        self.progress.resizes.append(failure.record)
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
        """The fallback when a live re-form is impossible: a new group from the newest good checkpoint."""
        source = self._restore_latest()
        if source is None:
            raise RuntimeError(f"the worker group was lost ({why}) before any checkpoint was written")
        record = {"kind": "restart", "epoch": self.progress.epoch + 1, "samples_seen": self.progress.samples_seen,
                  "updates": self.progress.updates, "checkpoint": source, "num_workers": self.group.num_workers,
                  "reason": why}
        self.sink.write(record)
        self.console.line(f"[red]restart[/]: live re-form impossible ({why}); restarted "
                          f"{self.group.num_workers} worker(s) from {source}")

    def resume(self) -> str | None:
        """Continue the run from its newest good checkpoint (None: none was written, so from the start)."""
        source = self._restore_latest()
        if source is None:
            moved = self.run.rewind_metrics(0)
            self.console.line(f"[yellow]resume[/]: no checkpoint was written yet; starting over from epoch 1"
                              + (f" ({moved} records moved to {self.run.superseded_path.name})" if moved else ""))
        self.sink.write({"kind": "resume", "epoch": self.progress.epoch + 1,
                         "samples_seen": self.progress.samples_seen, "updates": self.progress.updates,
                         "checkpoint": source, "max_workers": self.max_workers})
        return source

    def _restore_latest(self) -> str | None:
        """Load the newest checkpoint that verifies, into the controller and a fresh group; its file name."""
        from absa_cli.checkpoint import CheckpointStore  # torch import, only on these rare paths

        store = CheckpointStore(self.run.checkpoints_dir, self.config.checkpoint.keep_last)
        found = store.latest(report=lambda problem: self.console.line(f"[red]checkpoint[/]: {problem}"))
        if found is None:
            return None
        entry, state = found
        self.progress = Progress.from_dict(state["progress"])
        self._saved_at, self._saved_file = self.progress.updates, entry.file
        self.policy.load_state_dict(state["policy"])
        restored = self.policy.state
        self.decision = Decision(global_batch_size=restored.global_batch_size, adv_ratio=restored.adv_ratio,
                                 probe_next=restored.probe_next, growth=None, reason=f"restored from {entry.file}")
        moved = self.run.rewind_metrics(int(state["metrics_bytes"]))
        if moved:
            self.console.line(f"[yellow]resume[/]: {moved} record(s) written after {entry.file} moved to "
                              f"{self.run.superseded_path.name}")
        geometry = self.plan_geometry()
        self.group.restart(geometry.num_workers, state)
        return entry.file

    def save_checkpoint(self) -> str:
        """Checkpoint where training stands (an epoch boundary, or mid-epoch on a stop request); its file name."""
        from absa_cli.checkpoint import CheckpointStore  # torch import, only on the driver paths that write them

        self._check_lock()
        name = checkpoint_name(self.progress.epoch, self.progress.samples_seen)
        if self._saved_at == self.progress.updates:
            return name  # e.g. a stop requested right after the boundary checkpoint
        state = {**self._recovering(self.group.state_dict), "epoch": self.progress.epoch,
                 "samples_seen": self.progress.samples_seen, "updates": self.progress.updates,
                 "progress": self.progress.to_dict(), "policy": self.policy.state_dict(),
                 "metrics_bytes": self.run.metrics_size(), "preset": self.config.preset}
        CheckpointStore(self.run.checkpoints_dir, self.config.checkpoint.keep_last).save(name, state)
        self._saved_at, self._saved_file = self.progress.updates, name
        return name
