"""Acting on membership decisions: the group the controller trains on, kept at the size the decision says.

``GroupKeeper`` asks ``decide/membership.py`` at every point where the group may change and carries the answer out
through the worker-group contract:

- at an epoch boundary (the policy's batch may have grown: reason ``policy``);
- at a chunk boundary, when the group is smaller than the batch wants and the cluster now has room (``capacity``);
- after workers were lost (``failure``): the survivors re-formed; the lost ones are replaced when there is room.

A resize the cluster cannot carry out (``Shortfall``) is decided again on what the group has: accumulation keeps the
global batch exact. When not even one worker can start, it waits for capacity up to ``cluster.start_timeout_s``,
saying every ``WAIT_REPORT_S`` what it asked for and what the cluster has, then ends the run with one line
(``CapacityError``, exit code 2; the run stays resumable). Every change is a record with its reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from absa_cli.config import RunConfig
from absa_cli.decide.geometry import BatchGeometry
from absa_cli.decide.membership import Membership, decide_membership
from absa_cli.decide.policy import Policy
from absa_cli.driver.contract import GroupLost, Resized, Shortfall, WorkerFailure, WorkerGroup
from absa_cli.driver.records import geometry_record, same_geometry
from absa_cli.errors import UserError, counted
from absa_cli.run import profile as profiles

WAIT_POLL_S = 2.0  # how often to look for capacity while none is there
WAIT_REPORT_S = 30.0  # how often to say so


class CapacityError(UserError):
    """Not one worker could start within ``cluster.start_timeout_s``."""


@dataclass(frozen=True)
class Change:
    """The group the controller continues with: its geometry, and the live resize to time into the next step
    (None when the size did not change)."""

    geometry: BatchGeometry
    resize: Resized | None
    why: str = "policy"  # the cause of the change: policy (the batch grew), capacity, failure or restart


class GroupKeeper:
    def __init__(self, config: RunConfig, group: WorkerGroup, policy: Policy, sink: Any, console: Any,
                 check_stop: Callable[[], None], stopping: Callable[[], bool],
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.group = group
        self.policy = policy
        self.sink = sink
        self.console = console
        self.said = False  # this driver has printed the group's geometry (a resume restores the history, not the line)
        self.check_stop = check_stop  # while waiting for capacity, a stop request still ends the run
        self.stopping = stopping  # a stop is requested: replace no lost worker, the run is about to end
        self.clock, self.sleep = clock, sleep
        self.demanded = 0  # workers asked of the cluster's autoscaler (0: no request standing)
        profile = config.cluster.profile
        self.model = profiles.load(profile) if profile else None  # decide/throughput.py: a step-time model

    def _decide(self, capacity: int) -> Membership:
        batch = self.policy.state.global_batch_size
        return decide_membership(batch, self.policy.next_global_batch(), capacity, self.group.num_workers,
                                 self.config.cluster.max_workers, self.config.batch.per_worker_max, self.model)

    def form(self, progress: Any, why: str = "policy", capacity: int | None = None) -> Change:
        """The group for the policy's batch from what the cluster offers (waiting if it offers nothing; or from
        ``capacity``), resized live; workers started ahead for the next batch, and the cluster asked for what the
        batch (or the next one) wants beyond what it offers."""
        deadline = self.clock() + self.config.cluster.start_timeout_s
        if capacity is None:
            capacity = self.group.capacity()
            if capacity == 0:  # ask before waiting: an autoscaler may bring the capacity
                self._ask(self._decide(self.config.cluster.max_workers), progress)
                capacity = self._capacity(deadline)
        membership = self._decide(capacity)
        result = self.group.resize(membership.num_workers, within_s=deadline - self.clock())
        while isinstance(result, Shortfall):  # the cluster gave fewer: decide again on what the group has
            self.console.line(f"[yellow]cluster[/]: asked for {result.requested} workers, have {result.available} "
                              f"({result.reason}); accumulation keeps the global batch exact")
            membership = self._decide(result.available or self._capacity(deadline, failed=result.reason))
            result = self.group.resize(membership.num_workers, within_s=deadline - self.clock())
        self._ask(membership, progress)
        for line in self.group.notices():
            self.console.line(f"[yellow]cluster[/]: {line}")
        last = progress.history[-1] if progress.history else None
        if why == "policy" and last is not None and last["global_batch_size"] == membership.geometry.global_batch_size:
            why = "capacity"  # the same batch at an epoch boundary: only what the cluster offers changed
        self._log_geometry(membership, progress, why)
        if membership.prestart:
            self.group.prepare(membership.prestart)
        return Change(membership.geometry, result if isinstance(result, Resized) and result.live else None, why)

    def _ask(self, membership: Membership, progress: Any) -> None:
        """Ask the cluster for the group ``membership`` wants beyond what the group has (or withdraw the request
        once it has it): a ``demand`` record and a console line at every change."""
        demand = membership.target if membership.target > self.group.num_workers else 0
        if demand == self.demanded or self.stopping():
            return
        self.demanded = demand
        if not self.group.demand(demand):
            return
        if demand:
            batch = (f"the policy's next batch {self.policy.next_global_batch()}"
                     if membership.prestart > membership.wanted else
                     f"batch {membership.geometry.global_batch_size}")
            reason = f"{demand} workers wanted for {batch}; the group has {self.group.num_workers}"
        else:
            reason = f"withdrawn: the group has the {counted(self.group.num_workers, 'worker')} it wants"
        self.sink.write({"kind": "demand", "epoch": progress.epoch + 1, "workers": demand, "reason": reason})
        self.console.line(f"[yellow]cluster[/]: asked the autoscaler for {demand} workers ({reason})" if demand
                          else f"[yellow]cluster[/]: request to the autoscaler {reason}")

    def _capacity(self, deadline: float, failed: str = "") -> int:
        """The cluster's capacity; while it is none (or no worker could be started: ``failed``, the start's error),
        wait for some, until ``deadline`` (``cluster.start_timeout_s`` after the group began to form). The lines
        say why a start failed: a worker that dies starting (a bad config, a broken node) is not missing capacity."""
        capacity = 0 if failed else self.group.capacity()
        if capacity > 0:
            return capacity
        timeout = self.config.cluster.start_timeout_s
        started = reported = self.clock()
        why = f" (the last start failed: {failed})" if failed else ""
        self.console.line(f"[yellow]cluster[/]: no worker can start{why}: {self.group.describe_capacity()}; waiting "
                          f"until cluster.start_timeout_s={timeout:g} s have passed")
        while True:
            self.check_stop()
            if self.clock() >= deadline:
                raise CapacityError(f"no worker could start within cluster.start_timeout_s={timeout:g} s{why}: "
                                    f"{self.group.describe_capacity()}; free a slot or raise the timeout, then "
                                    f"resume the run")
            if self.clock() - reported >= WAIT_REPORT_S:
                reported = self.clock()
                self.console.line(f"[yellow]cluster[/]: still waiting ({reported - started:.0f} s): "
                                  f"{self.group.describe_capacity()}")
            self.sleep(max(0.0, min(WAIT_POLL_S, deadline - self.clock())))  # the last poll ends at the deadline
            capacity = self.group.capacity()
            if capacity > 0:
                return capacity

    def room_to_grow(self) -> bool:
        """The group is smaller than the policy's batch wants and the cluster has room now (a chunk boundary)."""
        if self.group.num_workers >= self.config.cluster.max_workers:
            return False
        wanted = self._decide(self.config.cluster.max_workers)  # as if every allowed worker were there
        return wanted.num_workers > self.group.num_workers and self.group.capacity() > self.group.num_workers

    def after_failure(self, lost: WorkerFailure, progress: Any) -> Change:
        """Workers were lost and the survivors re-formed: record the failure, then replace the lost workers if the
        cluster has room (a live grow, with its own ``resize`` record) — unless a stop is requested, when the run
        continues to its stop checkpoint on the survivors; the geometry to continue with."""
        failure = lost.failure
        record = failure.record()
        progress.resizes.append(record)
        self.sink.write(record)
        self.console.line(f"[red]failure[/]: lost {counted(failure.lost_workers, 'worker')} "
                          f"({failure.describe_lost()}: {failure.error}); {counted(failure.to_workers, 'worker')} "
                          f"continue{'s' if failure.to_workers == 1 else ''} from sample {failure.samples_seen:,} of "
                          f"epoch {failure.epoch + 1}")
        return self.form(progress, why="failure", capacity=self.group.num_workers if self.stopping() else None)

    def recovering(self, call: Callable[[], Any], progress: Any, attempts: int = 3) -> Any:
        """An epoch-boundary call (evaluation, probe, state) retried on the re-formed group if a worker is lost
        during it; nothing of the epoch's training is lost, since every step was already applied. Lost again on the
        last attempt: ``GroupLost`` (a restart from the checkpoint), not an internal error."""
        for attempt in range(attempts):
            try:
                return call()
            except WorkerFailure as lost:
                if attempt == attempts - 1:
                    raise GroupLost(f"workers were lost {attempts} times at the epoch boundary; last: "
                                    f"{lost.failure.error}") from lost
                change = self.after_failure(lost, progress)
                if change.resize is not None:  # a replacement at the boundary: no step to time
                    self.record_resize(change.resize, progress, None, "failure")

    def record_resize(self, resize: Resized, progress: Any, first_step_s: float | None, why: str) -> None:
        record = {**resize.record(progress.epoch + 1, first_step_s), "reason": why}
        progress.resizes.append(record)
        self.sink.write(record)
        step = "" if first_step_s is None else f"first step {first_step_s:.2f} s; "
        self.console.line(f"[bold]resize[/]: {resize.from_workers} → {resize.to_workers} workers live in "
                          f"{resize.resize_s:.2f} s ({step}{why})")

    def _log_geometry(self, membership: Membership, progress: Any, why: str) -> None:
        """A geometry record and a console line at the start and at every change; a resume on the geometry its
        checkpoint holds gets the line (and no record: the history has it)."""
        said, self.said = self.said, True
        if same_geometry(progress.history[-1] if progress.history else None, membership.geometry):
            if not said:
                self.console.line(f"[bold]geometry[/]: {membership.geometry.describe()} ({membership.reason}; as "
                                  f"at the checkpoint)")
            return
        record = {**geometry_record(progress.epoch + 1, membership.geometry, membership.reason), "cause": why,
                  "samples_seen": progress.samples_seen}
        progress.history.append({k: v for k, v in record.items() if k != "kind"})
        self.sink.write(record)
        self.console.line(f"[bold]geometry[/]: {membership.geometry.describe()} ({membership.reason})")
