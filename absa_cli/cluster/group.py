"""The Ray worker group: live resize and failure recovery without a restart from disk.

Grow: start the newcomers, re-form the process group under a new generation (fresh port), and send rank 0's
in-memory TrainState to the newcomers through the object store. Shrink: retire the extra actors and re-form.
Survivors keep their model, optimizer and data. Every phase is timed into the ``resize`` record.

Failure: a collective with a dead peer fails within ``cluster.collective_timeout_s`` (never hangs). The group
finds the survivors, reads from them where the last applied step left the epoch, re-forms with them, and raises
``WorkerFailure`` so that the controller continues from that exact sample — and decides whether to replace the
lost workers (a live grow, through ``resize``).

It implements the driver's worker-group contract (``driver/contract.py``); how many workers it has is always the
driver's decision (``decide/membership.py``).
"""

from __future__ import annotations

import enum
import time
import uuid
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from absa_cli import config as config_mod
from absa_cli.cluster.placement import Placement
from absa_cli.cluster.worker import WorkerActor
from absa_cli.config import RunConfig
from absa_cli.decide.geometry import BatchGeometry
from absa_cli.driver.contract import (Failure, GroupLost, Resized, ResizeResult, Shortfall, Unchanged,
                                      WorkerFailure)
from absa_cli.errors import UserError, counted, duration, first_line

class StopState(enum.Enum):
    """A stop request on its way to the workers: asked for by a signal handler, then sent by the main thread (no Ray
    call is made from a signal handler)."""

    NONE = "none"
    REQUESTED = "requested"
    SENT = "sent"


_STOP_POLL_S = 0.25  # how soon a stop request reaches workers busy in a chunk
_SAY_AFTER_S = 5.0  # a failure whose other workers have not answered after this long: say what absa waits for
_START_ATTEMPT_S = 60.0  # one attempt to start workers; the driver keeps trying until cluster.start_timeout_s


class RayWorkerGroup:
    def __init__(self, config: RunConfig, autoscaler: bool = True, training_set: dict[str, Any] | None = None) -> None:
        self.config = config
        self.autoscaler = autoscaler  # False: a cluster absa started for the run, which has no autoscaler
        self.config_yaml = config_mod.to_yaml(config)
        self.resource = "GPU" if ray.cluster_resources().get("GPU", 0) >= 1 else "CPU"
        self.label = f"x{uuid.uuid4().hex[:8]}"  # the run id, once known (name): workers are named after it
        self.placement = Placement(self.resource, config.cluster.placement)
        self.actors: list[Any] = []
        self._names: dict[str, str] = {}  # actor id → its name (and its placement group's)
        self._workers: dict[str, dict[str, Any]] = {}  # actor id → its pid, host and node, from ready()
        self._serial = 0
        self.spares: list[Any] = []  # started ahead of a likely grow: importing torch overlaps training
        self.generation = 0
        self._num_train_samples: int | None = None
        self._training_set = training_set  # as the driver read it (make_group), before any worker runs
        self.sample_log_dir = config.logging.sample_log_dir
        self._stop = StopState.NONE
        self._pending_state: dict | None = None  # a checkpoint the next start loads (restart)
        self._notices: list[str] = []  # lines for the console, once
        self._say: Any = lambda line: None  # report_to: a line about a long wait, while it lasts
        self._demanded = 0  # workers asked of the autoscaler; withdrawn on close
        self._warned_nodes: set[str] = set()

    # ------------------------------------------------------------------------------------------ membership

    @property
    def num_workers(self) -> int:
        return len(self.actors)

    @property
    def num_train_samples(self) -> int:
        if self._num_train_samples is None:
            self._num_train_samples = ray.get(self.actors[0].num_train_samples.remote())
        return self._num_train_samples

    @property
    def training_set(self) -> dict[str, Any]:
        if self._training_set is None:  # not given: read here, as make_group does
            from absa_cli.data import open_split

            self._training_set = open_split(self.config.data, self.config.data.train_split).identity()
        return self._training_set

    def name(self, run_id: str) -> None:
        """Workers started from now on are named ``absa-<run id>-worker<N>`` (``ray list actors``); until then
        after a random label."""
        self.label = run_id

    def record_sink(self, run_id: str) -> Any:
        """The run's figures as Ray metrics (Prometheus export, dashboard), tagged with the run id."""
        from absa_cli.cluster.metrics import RayMetricsSink

        return RayMetricsSink(run_id, self.config.preset)

    def capacity(self) -> int:
        """Workers this group could have now: its own, its spares and the free slots (0: none can start now)."""
        free = int(ray.available_resources().get(self.resource, 0))
        return len(self.actors) + len(self.spares) + free

    def describe_capacity(self) -> str:
        free = ray.available_resources().get(self.resource, 0)
        total = ray.cluster_resources().get(self.resource, 0)
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
        held = " and ".join(counted(n, noun) for n, noun in ((len(self.actors), "worker"), (len(self.spares), "spare"))
                            if n) or "none"
        return (f"a worker needs 1 {self.resource}; the cluster has {free:g} of {total:g} {self.resource} free on "
                f"{counted(nodes, 'node')}, and this run holds {held}")

    def _launch(self, count: int) -> list[Any]:
        """``count`` new actors, each in a placement group of its own on the node the placement strategy chose."""
        per_worker = {"num_gpus": 1} if self.resource == "GPU" else {"num_cpus": 1}
        threads = self.config.threads or (0 if self.resource == "GPU" else 1)
        names = []
        for _ in range(count):
            self._serial += 1
            names.append(f"absa-{self.label}-worker{self._serial}")
        actors = []
        for name, where in zip(names, self.placement.reserve(names)):
            actor = WorkerActor.options(**per_worker, name=name, scheduling_strategy=where).remote(
                self.config_yaml, threads)
            self._names[actor._actor_id.hex()] = name
            actors.append(actor)
        return actors

    def _kill(self, actor: Any) -> None:
        """Stop a worker and free its slot."""
        ray.kill(actor)
        self.placement.release(self._names.pop(actor._actor_id.hex(), ""))

    def prepare(self, num_workers: int) -> None:
        """Start spare actors now for a group of ``num_workers`` later, if the cluster has room (non-blocking).

        Actor start-up (imports, data, model) is the whole cost of a grow; started during the epoch before, it is
        paid while training runs, and the grow itself is only the rendezvous and the state transfer.
        """
        free = int(ray.available_resources().get(self.resource, 0))
        wanted = num_workers - len(self.actors) - len(self.spares)
        if wanted > 0 and free > 0:
            self.spares += self._launch(min(wanted, free))

    def demand(self, num_workers: int) -> bool:
        """Ask Ray's autoscaler for room for ``num_workers`` workers (0: withdraw). Ray keeps one such request per
        cluster, the last caller's; it asks for the cluster's total shape, so slots other jobs hold do not count
        as missing."""
        if not self.autoscaler:
            return False
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[dict(self.placement.bundle) for _ in range(num_workers)])
        self._demanded = num_workers
        return True

    def _start(self, count: int, patient_s: float | None = None) -> list[Any]:
        """``count`` started workers (spares first). ``patient_s``: the group has none, so nothing trains meanwhile
        and a placed worker's slow start-up is waited for (``_start_limit``); a grow waits one attempt, as its
        survivors stand idle meanwhile (the next chunk boundary tries again)."""
        reused, self.spares = self.spares[:count], self.spares[count:]
        actors = reused + self._launch(count - len(reused))
        began = time.monotonic()
        timeout = self.config.cluster.start_timeout_s
        limit, named = _start_limit(timeout, patient_s)
        try:
            futures = [actor.ready.remote() for actor in actors]
            _, pending = ray.wait(futures, num_returns=count, timeout=min(timeout, _START_ATTEMPT_S))
            if pending:
                self._await_starting(dict(zip(futures, actors)), pending, began, limit, named)
            for actor, info in zip(actors, ray.get(futures)):  # surfaces an error raised while a worker started
                self._workers[actor._actor_id.hex()] = info
                self._check_device(info)
                self._check_data(info)
        except Exception:
            for actor in actors:
                self._kill(actor)
            raise
        return actors

    def _await_starting(self, actor_of: dict[Any, Any], pending: list[Any], began: float, limit: float,
                        named: str) -> None:
        """Wait for workers that Ray has placed but whose start-up (imports, data, model) still runs, up to
        ``limit`` s from ``began``: on a loaded node (Ray runs workers at niceness 15) that can take longer than one
        attempt, and killing them would only start it over. A worker still unplaced after one attempt fails the
        start at once (never wait forever for capacity); so do a start-up past the limit (``named`` in the error)
        and a stop request."""
        count = len(actor_of)
        while pending:
            placed = sum(self.placement.placed(self._names[actor_of[ref]._actor_id.hex()]) for ref in pending)
            waited = time.monotonic() - began
            if placed < len(pending):
                starting = f" ({placed} placed, still starting)" if placed else ""
                raise TimeoutError(f"{len(pending) - placed} of {counted(count, 'worker')} could not be placed within "
                                   f"{duration(waited)}{starting}")
            if self._stop is not StopState.NONE:
                raise TimeoutError(f"a stop was requested while {placed} of {counted(count, 'worker')} started")
            if waited >= limit:
                raise TimeoutError(f"{placed} of {counted(count, 'worker')} placed but not started within {named}: "
                                   f"their start-up (imports, data, model) is stuck or starved of CPU")
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=min(_STOP_POLL_S * 4, limit - waited))

    def _check_data(self, info: dict[str, Any]) -> None:
        """A node whose ``data.root`` holds other files than the driver read would train on other samples than the
        epoch's plan names, silently: one line (a ``UserError``: no start attempt can fix it)."""
        theirs, ours = info.get("training_set"), self._training_set
        if ours is None or theirs is None or theirs == ours:
            return
        what = (f"{theirs['samples']:,} training samples there, {ours['samples']:,} on the driver"
                if theirs["samples"] != ours["samples"] else "other training files there than on the driver")
        raise UserError(f"the worker on node {info.get('node_ip')} reads {what} (data.root differs between the "
                        f"machines?); give every node the same files at data.root")

    def _check_device(self, info: dict[str, Any]) -> None:
        """A worker that holds a GPU slot but sees no CUDA device trains on the CPU: say so, once per node."""
        if self.resource != "GPU" or info.get("device", "cuda").startswith("cuda"):
            return
        if info.get("node_id") in self._warned_nodes:
            return
        self._warned_nodes.add(info.get("node_id"))
        self._notices.append(f"node {info.get('node_ip')} ({str(info.get('node_id'))[:8]}) declares GPUs to Ray but "
                             f"torch sees no CUDA device there: its workers train on the CPU; start that node with "
                             f"`ray start --num-gpus 0` or fix its CUDA install")

    def notices(self) -> list[str]:
        lines, self._notices = self._notices, []
        return lines

    def report_to(self, say: Any) -> None:
        self._say = say

    def devices(self) -> list[str]:
        return sorted({self._workers.get(actor._actor_id.hex(), {}).get("device_name", "?") for actor in self.actors})

    def num_parameters(self) -> int | None:
        return next((info["num_parameters"] for info in self._workers.values() if "num_parameters" in info), None)

    def _node(self, actor: Any) -> str:
        info = self._workers.get(actor._actor_id.hex(), {})
        return f"{info.get('node_ip', '?')} ({str(info.get('node_id', '?'))[:8]})"

    def _describe(self, actor: Any, rank: int) -> str:
        info = self._workers.get(actor._actor_id.hex(), {})
        return f"rank {rank}, pid {info.get('pid', '?')} on node {self._node(actor)}"

    def start(self, num_workers: int, state: dict | None = None, within_s: float | None = None) -> None:
        """The first generation (or a restart): ``num_workers`` fresh actors, optionally loaded with ``state``;
        ``within_s``: what is left of ``cluster.start_timeout_s`` for them to start (None: all of it; the wait is
        ``_start_limit``'s)."""
        self.actors = self._start(num_workers, self.config.cluster.start_timeout_s if within_s is None else within_s)
        try:
            self._rendezvous()
            if state is not None:
                ref = ray.put(state)
                ray.get([actor.load_state_dict.remote(ref) for actor in self.actors])
        except Exception:
            self.close()
            raise

    def resize(self, num_workers: int, within_s: float | None = None) -> ResizeResult:
        """Live re-form to ``num_workers``: what was done, with each phase's seconds; ``Shortfall`` if the
        newcomers could not start (the group keeps its size and the driver decides again). ``within_s``: the
        first generation's start-up limit (WorkerGroup.resize)."""
        old = len(self.actors)
        if num_workers == old:
            return Unchanged(old)
        started = time.perf_counter()
        if old == 0:  # the first generation (or a restart): nothing to keep
            try:
                self.start(num_workers, self._pending_state, within_s)
            except UserError:  # a node's data differs (_check_data): waiting cannot help
                raise
            except Exception as exc:  # not placed in time, or failed to start: the driver waits or decides again
                return Shortfall(requested=num_workers, available=0, reason=first_line(exc, typed=True))
            self._pending_state = None
            return Resized(0, num_workers, resize_s=time.perf_counter() - started,
                           placed=tuple(self._node(actor) for actor in self.actors))
        try:
            newcomers = self._start(num_workers - old) if num_workers > old else []
        except UserError:
            raise
        except Exception as exc:  # no room for them, or they died starting: keep the group
            return Shortfall(requested=num_workers, available=old, reason=first_line(exc, typed=True))
        for actor in self.actors[num_workers:]:
            self._retire(actor)
        actor_start_s = time.perf_counter() - started  # on a shrink: retiring the extra actors
        state_ref = self.actors[0].state_dict.remote() if newcomers else None  # actor to actor, not via the driver
        self.actors = self.actors[:num_workers] + newcomers
        mark = time.perf_counter()
        self._reform()
        rendezvous_s = time.perf_counter() - mark
        mark = time.perf_counter()
        if newcomers:
            try:
                ray.get([actor.load_state_dict.remote(state_ref) for actor in newcomers])
            except (RayActorError, ray.exceptions.RayTaskError) as exc:
                raise GroupLost(f"sending the state to new workers failed: {first_line(exc, typed=True)}") from exc
        return Resized(old, num_workers, actor_start_s=actor_start_s, rendezvous_s=rendezvous_s,
                       state_transfer_s=time.perf_counter() - mark, resize_s=time.perf_counter() - started,
                       placed=tuple(self._node(actor) for actor in newcomers))

    def _retire(self, actor: Any) -> None:
        try:
            ray.get(actor.leave.remote(), timeout=10)
        except (RayActorError, GetTimeoutError):
            pass
        self._kill(actor)

    def _reform(self) -> None:
        """Re-form live; any failure to do so means the group is lost (the controller restarts from disk)."""
        try:
            self._rendezvous()
        except (RayActorError, GetTimeoutError, ray.exceptions.RayTaskError) as exc:
            raise GroupLost(f"re-forming the process group failed: {first_line(exc, typed=True)}") from exc

    def restart(self, state: dict | None) -> None:
        """Tear everything down; the next ``resize`` starts fresh workers loaded with ``state``."""
        self.close()
        self._pending_state = state

    def _rendezvous(self) -> None:
        """Every member leaves its old process group and joins a new one on a fresh port of rank 0's node."""
        self.generation += 1
        address = ray.get(self.actors[0].ready.remote())["node_ip"]
        port = ray.get(self.actors[0].free_port.remote())
        timeout = self.config.cluster.collective_timeout_s
        ray.get([actor.join.remote(self.generation, rank, len(self.actors), address, port, timeout,
                                   self.sample_log_dir)
                 for rank, actor in enumerate(self.actors)])

    # ---------------------------------------------------------------------------------------------- work

    def _all(self, method: str, *args: Any) -> list[Any]:
        """Call ``method`` on every worker; a lost worker turns into recovery and ``WorkerFailure``."""
        futures = [getattr(actor, method).remote(*args) for actor in self.actors]
        errors = self._wait_all(futures)
        if errors:
            raise self._recover(errors)
        return ray.get(futures)

    def train_chunk(self, epoch: int, samples_seen: int, lrs: list[float], geometry: BatchGeometry,
                    adv_ratio: float = 0.0) -> Any:
        # every rank returns the same all-reduced statistics
        return self._all("train_chunk", epoch, samples_seen, lrs, geometry, adv_ratio)[0]

    def _wait_all(self, futures: list[Any]) -> list[BaseException]:
        """Wait for every rank; once one fails, the others get the collective timeout (plus a margin) to fail too."""
        errors: list[BaseException] = []
        pending = list(futures)
        deadline = failed_at = None
        while pending:
            if self._stop is StopState.REQUESTED:  # sent from here, not from the signal handler (no ray calls)
                self._stop = StopState.SENT
                for actor in self.actors:
                    actor.request_stop.remote()
            poll = _STOP_POLL_S if deadline is None else max(0.0, min(_STOP_POLL_S, deadline - time.monotonic()))
            done, pending = ray.wait(pending, num_returns=1, timeout=poll)
            if not done:
                if failed_at is not None and time.monotonic() - failed_at > _SAY_AFTER_S:
                    failed_at = None  # said once: the workers on a node SIGKILLed whole answer when Ray notices
                    cause = getattr(errors[0], "cause", None) or errors[0]  # a RayTaskError's first line is its pid
                    self._say(f"a worker failed ({first_line(cause, typed=True)}); waiting up to "
                              f"{deadline - time.monotonic():.0f} s more for the other {len(pending)} to fail or "
                              f"finish (cluster.collective_timeout_s={self.config.cluster.collective_timeout_s:g}; "
                              f"Ray notices a lost node within a minute)")
                if deadline is None or time.monotonic() < deadline:
                    continue
                # survivors stuck past the collective timeout: _recover's position probe finds them
                errors.append(TimeoutError(f"{counted(len(pending), 'worker')} did not finish after a peer failed"))
                break
            try:
                ray.get(done[0])
            except Exception as exc:  # RayActorError for a dead actor, RayTaskError for a failed collective
                errors.append(exc)
                if deadline is None:
                    deadline = time.monotonic() + self.config.cluster.collective_timeout_s + 10
                    failed_at = time.monotonic()
        return errors

    def _recover(self, errors: list[BaseException]) -> WorkerFailure:
        started = time.perf_counter()
        alive, lost = [], []
        for actor in self.actors:
            try:
                position = ray.get(actor.position.remote(), timeout=30)
                alive.append((position, actor))
            except (RayActorError, GetTimeoutError):
                lost.append(actor)
        if not lost:  # every worker is alive: the error is a bug or a bad input, not a failure to recover from
            raise _own_error(errors)
        if not alive:
            raise GroupLost(f"all {len(self.actors)} workers were lost: {first_line(errors[0], typed=True)}")
        old = len(self.actors)
        described = tuple(self._describe(actor, self.actors.index(actor)) for actor in lost)
        # The furthest survivor becomes rank 0 and its state is the truth (all agree unless the peer died inside
        # the last all-reduce, after which some ranks may have applied one more step than others).
        alive.sort(key=lambda item: item[0][:2], reverse=True)  # (epoch, samples_seen): the furthest first
        (epoch, samples_seen, steps_done, loss_sum, num_correct), leader = alive[0]
        behind = [actor for position, actor in alive[1:] if position[:2] != (epoch, samples_seen)]
        for actor in lost:
            self._kill(actor)
        self.actors = [actor for _, actor in alive]
        self._reform()
        if behind:
            state_ref = leader.state_dict.remote()
            ray.get([actor.load_state_dict.remote(state_ref) for actor in behind])
        return WorkerFailure(Failure(epoch, samples_seen, steps_done, from_workers=old, lost_workers=len(lost),
                                     to_workers=len(self.actors), error=first_line(errors[0], typed=True),
                                     recovery_s=time.perf_counter() - started, lost=described,
                                     loss_sum=loss_sum, num_correct=num_correct))

    def evaluate(self) -> Any:
        return self._all("evaluate")[0]

    def probe(self, epoch: int, draw: int = 0) -> Any:
        return self._all("probe", epoch, draw)[0]

    def state_dict(self) -> dict:
        future = self.actors[0].state_dict.remote()
        errors = self._wait_all([future])
        if errors:
            raise self._recover(errors)
        return ray.get(future)

    def hessian(self, options: Any, state: dict) -> dict:
        return self._all("hessian", options, ray.put(state))[0]

    def request_stop(self) -> None:
        """From a signal handler: only a flag; the wait loop tells the workers, which stop after the same step."""
        if self._stop is StopState.NONE:
            self._stop = StopState.REQUESTED

    def close(self) -> None:
        for actor in self.actors + self.spares:
            self._kill(actor)
        self.actors, self.spares = [], []
        self.placement.release_all()
        if self._demanded:
            try:
                self.demand(0)
            except Exception:  # the cluster is gone already: no request stands
                pass


def _start_limit(timeout: float, patient_s: float | None) -> tuple[float, str]:
    """How long a start waits for workers Ray has placed, and how its error names that limit. A grow
    (``patient_s`` None) waits one attempt. The first generation waits what is left of ``cluster.start_timeout_s``
    after the driver's wait for a free slot (``patient_s``), and at least one attempt: a slot found at the end of
    the timeout still gets a worker's start-up its chance."""
    attempt_s = min(timeout, _START_ATTEMPT_S)
    if patient_s is None:
        return attempt_s, f"one attempt, {attempt_s:g} s"
    if patient_s > timeout - min(1.0, timeout / 2):  # no wait for a slot, only the driver's own milliseconds
        return timeout, f"cluster.start_timeout_s={timeout:g} s"
    left = f"{round(max(0.0, patient_s), 1):g} s"
    if patient_s > attempt_s:
        return patient_s, f"the {left} left of cluster.start_timeout_s={timeout:g} s after the wait for a free slot"
    return attempt_s, (f"one attempt, {attempt_s:g} s (the wait for a free slot left {left} of "
                       f"cluster.start_timeout_s={timeout:g} s)")


def _own_error(errors: list[BaseException]) -> BaseException:
    """What to raise when every worker is alive: a worker's own ``UserError`` (bad input met mid-run, e.g. a corrupt
    image), unwrapped from Ray's ``RayTaskError`` so the run ends on its one line; else the first error as Ray
    raised it (a bug: its traceback stays). The peers' collective errors that follow are its consequences."""
    causes = [getattr(error, "cause", None) for error in errors]
    return next((cause for cause in causes if isinstance(cause, UserError)), errors[0])
