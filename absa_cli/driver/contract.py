"""The worker-group contract: what the driver asks of a group of workers, and the typed answers it gets back.

The driver defines it; the groups implement it — ``driver/local_group.py`` (one worker in this process),
``cluster/group.py`` (Ray actors) and ``tests/scripted_group.py`` (scripted failures and capacity, for tests). The
controller talks to nothing else, so every recovery and capacity path runs the same code whichever group is below.

The driver changes the size through ``resize``, which reports what it did: ``Resized`` (live, with each phase's
seconds), ``Unchanged``, or ``Shortfall`` (the cluster could not start the newcomers; the group kept its size).
Only two other things change it: a failure shrinks the group to its survivors, and ``restart`` empties it (the next
``resize`` starts new workers from the checkpoint). Membership is decided above the group
(``decide/membership.py``); a group never picks a worker count itself.

Two events interrupt a call: ``WorkerFailure`` (workers were lost; the survivors have re-formed and report where the
last applied step left the epoch) and ``GroupLost`` (no live re-form is possible: restart from a checkpoint).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Protocol

from absa_cli.decide.geometry import BatchGeometry
from absa_cli.errors import counted


@dataclass(frozen=True)
class Resized:
    """A live change of size (``from_workers`` 0: the first start), with the seconds of each phase."""

    from_workers: int
    to_workers: int
    actor_start_s: float = 0.0  # starting newcomers (spares started ahead are already running), or retiring extras
    rendezvous_s: float = 0.0  # re-forming the process group
    state_transfer_s: float = 0.0  # rank 0's state to the newcomers
    resize_s: float = 0.0  # all of the above
    placed: tuple[str, ...] = ()  # where the newcomers run: "node IP (node id prefix)" each

    @property
    def live(self) -> bool:
        """A resize of a running group (worth a ``resize`` record), not the first start."""
        return self.from_workers > 0

    def record(self, epoch: int, first_step_s: float | None) -> dict[str, Any]:
        return {"kind": "resize", **asdict(self), "epoch": epoch, "first_step_s": first_step_s}


@dataclass(frozen=True)
class Unchanged:
    num_workers: int


@dataclass(frozen=True)
class Shortfall:
    """The newcomers could not start (no free slot in time, or they failed to start); the group kept its size."""

    requested: int
    available: int
    reason: str


ResizeResult = Resized | Unchanged | Shortfall


@dataclass(frozen=True)
class Failure:
    """Workers lost during a call; the survivors re-formed. ``samples_seen``: where the last step applied on every
    survivor left epoch ``epoch`` (0-based); ``steps_done``: steps of the interrupted chunk that were applied, and
    ``loss_sum``/``num_correct`` their training loss and correct predictions over the whole global batches (so the
    epoch's train metrics cover them too, as they cover every other applied step)."""

    epoch: int
    samples_seen: int
    steps_done: int
    from_workers: int
    lost_workers: int
    to_workers: int  # the survivors
    error: str  # the first line of what the lost call raised (it may name a survivor whose collective failed)
    recovery_s: float
    lost: tuple[str, ...] = ()  # the lost workers: "rank R, pid P on node N"
    loss_sum: float = 0.0
    num_correct: int = 0

    def describe_lost(self) -> str:
        return "; ".join(self.lost) or counted(self.lost_workers, "worker")

    def record(self) -> dict[str, Any]:
        """The ``failure`` record (a replacement the driver then starts is a ``resize`` record of its own)."""
        return {"kind": "failure", "epoch": self.epoch + 1, "samples_seen": self.samples_seen,
                "from_workers": self.from_workers, "lost_workers": self.lost_workers, "lost": list(self.lost),
                "to_workers": self.to_workers, "error": self.error, "recovery_s": self.recovery_s}


class WorkerFailure(Exception):
    """Workers were lost mid-call. The group has already re-formed with the survivors (``failure`` says how many
    and where the epoch stands); the driver decides whether to replace them."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.error)
        self.failure = failure


class GroupLost(RuntimeError):
    """The group cannot continue live (every worker lost, or a re-form failed): restart from the last checkpoint."""


class WorkerGroup(Protocol):
    """What the driver needs from a group of workers; every worker holds the same model after every step."""

    @property
    def num_workers(self) -> int: ...

    @property
    def num_train_samples(self) -> int: ...

    @property
    def training_set(self) -> dict[str, Any]:
        """What checkpoints record of the training set (``ImageDataset.identity``), known before a worker starts:
        a resume checks it first."""

    def capacity(self) -> int:
        """Workers the group could have now: its own, the spares it started ahead, and the cluster's free slots
        (0: not one worker could start now)."""

    def describe_capacity(self) -> str:
        """One line: what a worker needs and what the cluster has free, for a wait or a shortfall."""

    def name(self, run_id: str) -> None:
        """Name the workers after the run, where the cluster shows names (``ray list actors``)."""

    def record_sink(self, run_id: str) -> Any | None:
        """A sink for the run's records that shows its figures where the cluster's users look (Ray's metrics), or
        None."""

    def prepare(self, num_workers: int) -> None:
        """Start spare workers now, without waiting, for a group of ``num_workers`` later (if the cluster has room)."""

    def resize(self, num_workers: int, within_s: float | None = None) -> ResizeResult:
        """Bring the group to ``num_workers`` live (or start it, the first time). ``within_s``: how long starting
        the first generation may take, what is left of ``cluster.start_timeout_s`` after waiting for capacity
        (None: all of it), though never less than one attempt; a live resize of a running group ignores it (it
        gives newcomers one attempt)."""

    def demand(self, num_workers: int) -> bool:
        """Tell the cluster (its autoscaler) that the group will want ``num_workers`` workers; 0 withdraws the
        request. Nothing is started: the driver grows onto the capacity when it appears. False: this cluster has
        nobody to tell (a local cluster absa started, one process)."""

    def notices(self) -> list[str]:
        """Lines to show once, then forgotten (e.g. a worker that got a GPU slot on a node without CUDA)."""

    def report_to(self, say: Callable[[str], None]) -> None:
        """Where to say, during a call, what it waits for when the wait is long (the workers of a lost node)."""

    def devices(self) -> list[str]:
        """The kinds of device the workers train on now, each once, sorted (``accel.device_name``)."""

    def num_parameters(self) -> int | None:
        """The model's parameters (an update all-reduces 4 bytes of gradient each), as a worker counted them; None
        before any worker started."""

    def train_chunk(self, epoch: int, samples_seen: int, lrs: list[float], geometry: BatchGeometry,
                    adv_ratio: float = 0.0) -> Any:
        """``len(lrs)`` optimizer steps from ``samples_seen`` of ``epoch``: reduced ``ChunkStats``."""

    def evaluate(self) -> Any: ...

    def probe(self, epoch: int, draw: int = 0) -> Any: ...

    def state_dict(self) -> dict: ...

    def restart(self, state: dict | None) -> None:
        """Start over from ``state`` (a checkpoint: resume, or the fallback when a live re-form is impossible; None:
        none was written yet, so from the seed): every worker goes; the next ``resize`` starts new ones loaded with
        it."""

    def request_stop(self) -> None:
        """From a signal handler: the workers stop after the step in progress, all after the same one."""

    def close(self) -> None: ...
