"""Checkpoints as the driver uses them: save where training stands, and find the newest good one to continue from.

What a checkpoint holds is world-size independent: the group's model, optimizer, RNG and probe state (rank 0's,
the same on every rank), the policy state, ``Progress`` and the size ``metrics.jsonl`` had, so a resume or a restart
continues exactly — on any number of workers — and moves the records written after it aside. torch is imported by
``run/checkpoint.py`` only when a checkpoint is written or read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from absa_cli.decide.policy import Decision, Policy
from absa_cli.driver.progress import Progress
from absa_cli.run.rundir import RunDir, checkpoint_name


@dataclass(frozen=True)
class Restored:
    source: str  # the checkpoint's file name
    progress: Progress
    decision: Decision  # the policy's decision in force at the checkpoint
    state: dict[str, Any]  # what the group loads
    moved: int  # records written after the checkpoint, moved to metrics.superseded.jsonl


class Checkpoints:
    def __init__(self, run: RunDir, keep_last: int, report: Callable[[str], None], config: Any,
                 training_set: Callable[[], dict[str, Any]]) -> None:
        from absa_cli.config import fingerprint, identity

        self.run = run
        self.training_set = training_set  # the group's training set now (ImageDataset.identity): what a
        # checkpoint's position inside the epoch's permutation is a position in
        self.keep_last = keep_last
        self.uid = run.uid()
        self.keys = identity(config)
        # what every checkpoint says about whose it is (check_identity refuses another run's on restore)
        self.owner = {"uid": self.uid, "id": run.id, "fingerprint": fingerprint(self.keys), "config": self.keys}
        self.report = report  # one line per damaged checkpoint skipped
        self.saved_at = 0  # `updates` at the last checkpoint written or restored; 0: none needed yet
        self.saved_file: str | None = None  # that checkpoint's file name

    def _store(self):
        from absa_cli.run.checkpoint import CheckpointStore  # torch import: only when checkpoints are touched

        return CheckpointStore(self.run.checkpoints_dir, self.keep_last)

    def save(self, progress: Any, policy_state: dict[str, Any], group_state: Callable[[], dict],
             preset: str) -> str | None:
        """Checkpoint ``progress`` (an epoch boundary, or mid-epoch on a stop request); the file name. Nothing is
        written when no update was applied since the last one (e.g. a stop right after the boundary checkpoint:
        that one's name; before the first update: None, nothing to keep)."""
        name = checkpoint_name(progress.epoch, progress.samples_seen)
        if self.saved_at == progress.updates:
            return self.saved_file
        state = {**group_state(), "epoch": progress.epoch, "samples_seen": progress.samples_seen,
                 "updates": progress.updates, "progress": progress.to_dict(), "policy": policy_state,
                 "metrics_bytes": self.run.metrics_size(), "preset": preset, "run": self.owner,
                 "training_set": self.training_set()}
        self._store().save(name, state)
        self.saved_at, self.saved_file = progress.updates, name
        return name

    def kept(self) -> str:
        """What a run aborted now leaves to resume from, in words: the checkpoint written or restored last; before
        a resume restored one, the run's own, untouched."""
        from absa_cli.run.checkpoint import CheckpointError

        if self.saved_file is not None:
            return f"the last checkpoint, {self.saved_file}, stands"
        try:
            entries = self._store().entries()
        except (CheckpointError, OSError):  # a damaged manifest: what it listed is there all the same
            entries = [None]
        return "the last checkpoint stands" if entries else "no checkpoint was written yet (a resume starts over)"

    def latest(self) -> tuple[str, dict[str, Any]] | None:
        """(file name, state) of the newest checkpoint that verifies; damaged ones are reported and skipped."""
        from absa_cli.run.checkpoint import check_identity

        found = self._store().latest(report=self.report, accept=lambda file, state: check_identity(
            file, state, self.uid, self.run.id, self.keys))
        if found is None:
            return None
        entry, state = found
        self.saved_at, self.saved_file = int(state["updates"]), entry.file
        return entry.file, state

    def restore(self, policy: Policy) -> Restored | None:
        """The newest good checkpoint, its policy state loaded into ``policy``; the records written after it are
        moved to ``metrics.superseded.jsonl``. None if there is none."""
        found = self.latest()
        if found is None:
            return None
        source, state = found
        self._check_training_set(source, state)
        policy.load_state_dict(state["policy"])
        s = policy.state
        decision = Decision(global_batch_size=s.global_batch_size, adv_ratio=s.adv_ratio, probe_next=s.probe_next,
                            growth=None, reason=f"restored from {source}")
        moved = self.run.rewind_metrics(int(state["metrics_bytes"]))
        return Restored(source, Progress.from_dict(state["progress"]), decision, state, moved)

    def _check_training_set(self, source: str, state: dict[str, Any]) -> None:
        """One line (exit 2, before anything changes) for a training set that is not the one the checkpoint was
        written on: the epoch's order is a permutation of its indices, so files added or removed since would feed
        some samples twice and others never, and shift which file an index names. (A checkpoint from before absa
        recorded it is not checked.)"""
        from absa_cli.errors import UserError

        saved, now = state.get("training_set"), self.training_set()
        if not isinstance(saved, dict) or saved == now:
            return
        if saved.get("samples") != now["samples"]:
            what = f"has {now['samples']:,} samples now and had {saved.get('samples'):,}"
        else:  # same count: renamed or replaced files, or under data.train_size a folder that changed
            what = f"names other files now than the {now['samples']:,} it named"
        raise UserError(f"run {self.run.id}: its training set {what} when {source} was written (files added to, "
                        f"removed from or renamed in the dataset since?); resume with data.root=PATH naming the "
                        f"files it trained on, or start a new run")
