"""The epoch loop: the one place that acts (no torch, no Ray at import).

It acts on decisions made elsewhere — the policy's (``decide/``: the batch, the adversarial fraction, whether to
probe) and the membership's (``decide/membership.py``: how many workers, how many to start ahead) — through the
worker-group contract (``driver/contract.py``), so ``--local``, Ray and the tests' scripted group run one loop.

Each epoch: decide the group for the policy's batch from what the cluster offers and resize live; run chunks of
steps (a lost worker: continue from the exact sample on the survivors, replaced when the cluster has room);
evaluate; probe if asked; hand the measurements to the policy; write the epoch record; checkpoint (with
``Progress`` and the policy state, so a resume continues exactly, on any number of workers). ``train`` returns how
the run ended (``driver/outcome.py``).
"""

from __future__ import annotations

import math
import signal
import time
from typing import Any

from absa_cli.config import RunConfig
from absa_cli.decide.geometry import BatchGeometry, samples_in_epoch, steps_in_epoch
from absa_cli.decide.policy import Decision, EpochMeasurements, check_batch_fits, make_policy
from absa_cli.driver import outcome
from absa_cli.driver.checkpoints import Checkpoints
from absa_cli.driver.contract import GroupLost, WorkerFailure, WorkerGroup
from absa_cli.driver.groups import GroupKeeper
from absa_cli.driver.progress import Progress
from absa_cli.driver.records import epoch_record, event_record
from absa_cli.errors import UserError, counted
from absa_cli.run.lock import LockLost
from absa_cli.run.metrics import Console, FanOut, JsonlSink
from absa_cli.run.rundir import RunDir

MAX_RESTARTS = 3  # restarts (from a checkpoint, or the start) per run before giving up: a failure that repeats
# must not loop


class Controller:
    def __init__(self, config: RunConfig, run: RunDir, group: WorkerGroup, console: Console, lock: Any = None):
        self.config = config
        self.run = run
        self.group = group
        self.console = console
        self.lock = lock  # the run's RunLock when a CLI driver holds one: checked before every write
        self.sink = JsonlSink(run.metrics_path)
        if config.logging.tensorboard:
            from absa_cli.run.tensorboard import TensorBoardSink  # torch import: only when asked for

            self.sink = FanOut(self.sink, TensorBoardSink(run.path / "tensorboard"))
        cluster_sink = group.record_sink(run.id)
        if cluster_sink is not None:
            self.sink = FanOut(self.sink, cluster_sink)
        self.progress = Progress()
        self.policy = make_policy(config)
        self._initial_policy = self.policy.state_dict()  # a restart before any checkpoint starts from it
        self.decision: Decision = self.policy.initial()
        self.checkpoints = Checkpoints(run, config.checkpoint.keep_last,
                                       report=lambda problem: console.line(f"[red]checkpoint[/]: {problem}"),
                                       config=config, training_set=lambda: group.training_set)
        self.last_record: dict[str, Any] | None = None
        self.resumed = False  # a resume found its checkpoint (or none to find): from here on, the run is running
        self.stop: outcome.StopRequest | None = None
        self.abort_signal: int | None = None  # a second signal: the run ends at once (KeyboardInterrupt)
        group.name(run.id)
        group.report_to(lambda line: console.line(f"[yellow]failure[/]: {line}"))
        self.groups = GroupKeeper(config, group, self.policy, self.sink, console, check_stop=self._check_stop,
                                  stopping=lambda: self.stop is not None)

    def close(self) -> None:
        self.sink.close()

    # ----------------------------------------------------------------------------------- how a run ends

    def train(self, resume: bool = False) -> outcome.Outcome:
        """Train (or resume) to the end; how it ended. An internal error is raised, not returned."""
        try:
            if resume:
                self.resume()
            summary = self.run_all()
            return outcome.finished(summary, outcome.summary_line(summary, self.run.path, resumed=resume))
        except outcome.Stopped as stopped:
            return outcome.stopped(self.stop.signum, stopped.checkpoint, self.progress.epoch, self.progress.updates)
        except KeyboardInterrupt:  # the second signal: the last checkpoint stands
            return outcome.aborted(self.abort_signal or signal.SIGINT, self.progress.epoch, self.checkpoints.kept())
        except LockLost as exc:  # the run is another driver's now: write nothing more
            return outcome.lock_lost(str(exc))
        except outcome.GaveUp as exc:
            return outcome.gave_up(str(exc), self.progress.epoch, self.progress.updates)
        except outcome.Diverged as exc:
            return outcome.diverged(str(exc), self.progress.epoch, self.progress.updates)
        except UserError as exc:  # the run stays resumable; one refused before restoring anything stays as it was
            if resume and not self.resumed:
                return outcome.refused(str(exc), exc.exit_code)
            return outcome.user_error(str(exc), exc.exit_code)

    def request_stop(self, signum: int) -> None:
        """Called from a signal handler: flags only; the loop stops after the step in progress."""
        self.stop = outcome.StopRequest(signum)
        self.group.request_stop()

    def _check_stop(self) -> None:
        self._check_lock()
        if self.stop is not None:
            raise outcome.Stopped(self.save_checkpoint())

    def _check_lock(self) -> None:
        """``LockLost`` once another driver has taken the run over."""
        if self.lock is not None:
            self.lock.check()

    # ------------------------------------------------------------------------------------------- the loop

    def run_all(self) -> dict[str, Any]:
        started = time.perf_counter()
        self.console.line(f"[bold]policy[/] {self.config.policy.name}: {self.decision.reason}")
        self.console.status(policy=self.decision.reason, updates=self.progress.updates)
        restarts, lost = 0, None
        while self.progress.epoch < self.config.epochs:
            try:  # a restart inside: a group that cannot even re-form counts as another loss, not a traceback
                if lost is not None:
                    self.restart_from_checkpoint(str(lost))
                    lost = None
                self._check_stop()
                self.last_record = self.run_epoch()
            except GroupLost as exc:
                restarts, lost = restarts + 1, exc
                if restarts > MAX_RESTARTS:
                    raise outcome.GaveUp(f"the worker group was lost {restarts} times (restarted after each of the "
                                         f"first {MAX_RESTARTS}); last: {exc}") from exc
        if self.last_record is None:  # resumed from the last epoch's checkpoint: nothing was left to train
            epochs = self.run.records("epoch")
            self.last_record = epochs[-1] if epochs else None
        return {"epochs": self.config.epochs, "updates": self.progress.updates,
                "final_test_acc": self.last_record["test_acc"] if self.last_record else None,
                "best_test_acc": self.progress.best_test_acc,
                "final_global_batch_size": self.decision.global_batch_size,
                "wall_s": time.perf_counter() - started}

    def run_epoch(self) -> dict[str, Any]:
        progress, trained = self.progress, self.decision
        epoch_started = time.perf_counter()
        change = self.groups.form(progress)
        self._check_stop()  # a stop requested while the group formed: before any step at the new size
        mark = time.perf_counter()
        totals, geometry, resize_s = self._train_epoch(change)
        mark, train_s = time.perf_counter(), time.perf_counter() - mark
        evaluation = self.groups.recovering(self.group.evaluate, progress)
        eval_s = time.perf_counter() - mark
        if not math.isfinite(evaluation.loss):  # e.g. weights that overflow only on the test set's inputs
            raise outcome.Diverged(f"the test loss became {evaluation.loss}", progress.epoch + 1, progress.updates,
                                   geometry.global_batch_size, [totals.lr], self.checkpoints.saved_file,
                                   outcome.advice(self.config))
        outcome.check_collapsed(self.config, progress, totals, evaluation.accuracy, geometry.global_batch_size,
                                self.checkpoints.saved_file)  # finite, but blown up or back at chance: no probe
        probes = self._probe(progress) if trained.probe_next else []
        self.decision = self.policy.observe(EpochMeasurements(
            epoch=progress.epoch + 1, num_epochs=self.config.epochs,
            eigenvalue=probes[0].eigenvalue if probes else None, rechecks=tuple(p.eigenvalue for p in probes[1:]),
            train_loss=totals.loss_sum / max(totals.samples, 1), test_acc=evaluation.accuracy))
        record = epoch_record(progress.epoch + 1, progress, self.group.num_train_samples, geometry, totals,
                              evaluation, probes, trained, self.decision, resize_s, time.perf_counter() - epoch_started,
                              train_s, eval_s, self.group.devices())
        progress.next_epoch(evaluation.accuracy)
        self._check_lock()
        self.sink.write(record)
        self.console.epoch_done(record)
        if progress.epoch % self.config.checkpoint.every_epochs == 0 or progress.epoch == self.config.epochs:
            self.save_checkpoint()
        counted = self.group.num_parameters()  # None: no worker said (never after an epoch); keep what was written
        self.run.write_info(last_epoch=progress.epoch, updates=progress.updates, best_test_acc=progress.best_test_acc,
                            test_acc=evaluation.accuracy, global_batch_size=geometry.global_batch_size,
                            num_workers=geometry.num_workers, **({"num_parameters": counted} if counted else {}))
        return record

    # ---------------------------------------------------------------------------------------- training

    def _probe(self, progress: Any) -> list[Any]:
        """The epoch's probe, then its rechecks on new samples while the policy asks for them (``policy.recheck``)."""
        probes = [self.groups.recovering(lambda: self.group.probe(progress.epoch), progress)]
        while self.policy.wants_recheck([p.eigenvalue for p in probes]):
            draw = len(probes)
            probes.append(self.groups.recovering(lambda: self.group.probe(progress.epoch, draw), progress))
        return probes

    def _train_epoch(self, change: Any) -> tuple[Any, BatchGeometry, float]:
        """Chunks of ``logging.chunk_steps`` steps from ``samples_seen`` to the epoch's last full global batch (the
        tail that does not fill one is dropped; the epoch record counts it). (totals, final geometry, resize s).

        After a live resize the first chunk is a single step, timed into the resize record (``first_step_s``). A
        lost worker ends a chunk early: the survivors re-formed, the driver replaces what it can, and the epoch
        continues from the exact sample where the last applied step stopped. Between chunks the group grows onto
        capacity that appeared, if the batch wants more workers.
        """
        progress, num_samples = self.progress, self.group.num_train_samples
        totals = progress.totals  # not empty when resumed mid-epoch
        geometry, resize, why = change.geometry, change.resize, change.why
        batch = geometry.global_batch_size  # a failure may change the geometry, never the global batch
        num_steps, epoch_end = steps_in_epoch(num_samples, batch), samples_in_epoch(num_samples, batch)
        if num_steps == 0:  # the CLI refuses such a config before anything starts; this guards every other caller
            check_batch_fits(self.config, num_samples)
        resize_s = resize.resize_s if resize else 0.0
        self.console.status(adv_ratio=self.decision.adv_ratio)
        self.console.epoch_started(progress.epoch + 1, self.config.epochs, num_steps, geometry.describe(),
                                   steps_done=progress.samples_seen // batch)
        while progress.samples_seen < epoch_end:
            steps_left = (epoch_end - progress.samples_seen) // batch
            count = 1 if resize is not None else min(self.config.logging.chunk_steps, steps_left)
            lrs = [self.policy.lr(progress.epoch + (progress.samples_seen + i * batch) / num_samples)
                   for i in range(count)]
            try:
                stats = self.group.train_chunk(progress.epoch, progress.samples_seen, lrs, geometry,
                                               self.decision.adv_ratio)
            except WorkerFailure as lost:
                progress.samples_seen = lost.failure.samples_seen
                progress.updates += lost.failure.steps_done
                totals.add_interrupted(lost.failure, geometry)  # its applied steps' loss and accuracy too
                if resize is not None:  # a resize whose first step never completed: recorded without it
                    self.groups.record_resize(resize, progress, None, why)
                change = self.groups.after_failure(lost, progress)
                geometry, resize, why = change.geometry, change.resize, change.why
                self._check_stop()
                continue
            if resize is not None:
                self.groups.record_resize(resize, progress, stats.seconds, why)
                resize = None
            outcome.check_finite(stats, progress.epoch + 1, progress.updates, batch, lrs, self.checkpoints.saved_file,
                                 self.config)
            progress.samples_seen += stats.samples
            progress.updates += stats.steps
            totals.add(stats, lrs[stats.steps - 1], geometry)  # a stop request may have cut the chunk short
            self.console.chunk_done(num_steps - (steps_left - stats.steps), num_steps,
                                    stats.samples / max(stats.seconds, 1e-9), stats.loss_sum / max(stats.samples, 1),
                                    lr=totals.lr, updates=progress.updates,
                                    train_acc=totals.num_correct / max(totals.samples, 1))
            if progress.samples_seen < epoch_end:  # a stop at the epoch's end finishes the epoch first
                self._check_stop()
                if self.groups.room_to_grow():
                    change = self.groups.form(progress, why="capacity")
                    geometry, resize, why = change.geometry, change.resize, change.why
        return totals, geometry, resize_s

    # ------------------------------------------------------------------------------------- checkpoints

    def save_checkpoint(self) -> str | None:
        """Checkpoint where training stands (an epoch boundary, or mid-epoch on a stop request); its file name
        (None before the first update: nothing to keep)."""
        self._check_lock()
        return self.checkpoints.save(self.progress, self.policy.state_dict(),
                                     lambda: self.groups.recovering(self.group.state_dict, self.progress),
                                     self.config.preset)

    def resume(self) -> str | None:
        """Continue the run from its newest good checkpoint (None: none was written, so from the start)."""
        source = self._restore_latest()
        if source is None:
            moved = self.run.rewind_metrics(0)
            self.console.line("[yellow]resume[/]: no checkpoint was written yet; starting over from epoch 1"
                              + (f" ({moved} records moved to {self.run.superseded_path.name})" if moved else ""))
        self.sink.write(event_record("resume", self.progress, checkpoint=source,
                                     max_workers=self.config.cluster.max_workers))
        self.resumed = True
        return source

    def restart_from_checkpoint(self, why: str) -> None:
        """The fallback when a live re-form is impossible: a new group from the newest good checkpoint, or from the
        start when none was written yet (exact: the run starts again as it started, from its seed)."""
        source = self._restore_latest()
        if source is None:
            self._start_over()
        self.groups.form(self.progress, why="restart")
        self.sink.write(event_record("restart", self.progress, checkpoint=source,
                                     num_workers=self.group.num_workers, reason=why))
        self.console.line(f"[red]restart[/]: live re-form impossible ({why}); restarted "
                          f"{counted(self.group.num_workers, 'worker')} from "
                          f"{source or 'the start (no checkpoint was written yet)'}")

    def _start_over(self) -> None:
        """Back to the run's first step: its initial policy state, no progress, no records (moved aside), and a
        group whose next workers start from the seed."""
        self.policy.load_state_dict(self._initial_policy)
        self.decision, self.progress = self.policy.initial(), Progress()
        moved = self.run.rewind_metrics(0)
        if moved:
            self.console.line(f"[yellow]restart[/]: {counted(moved, 'record')} moved to "
                              f"{self.run.superseded_path.name}")
        self.group.restart(None)

    def _restore_latest(self) -> str | None:
        """Load the newest checkpoint that verifies, into the controller and a fresh group; its file name."""
        restored = self.checkpoints.restore(self.policy)
        if restored is None:
            return None
        self.progress, self.decision = restored.progress, restored.decision
        if restored.moved:
            self.console.line(f"[yellow]resume[/]: {counted(restored.moved, 'record')} written after {restored.source} "
                              f"moved to {self.run.superseded_path.name}")
        self.group.restart(restored.state)
        return restored.source
