"""One training worker as a Ray actor: an ``Engine`` plus membership in a re-formable process group.

The actor keeps its model, optimizer and data in memory across resizes: joining a new generation of the group
only destroys the old torch.distributed process group and creates a new one (gloo on CPU, NCCL on GPU) with a
collective timeout, so a dead peer turns into an error instead of a hang.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import ray


def _wait_for_listener(address: str, port: int, timeout_s: float) -> None:
    """Wait until rank 0's store listens: a client that connects too early backs off for ~0.7 s in TCPStore,
    which would otherwise be most of a live grow (measured in benchmarks/resize_overhead.py)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.005)


def die_on_sigterm() -> None:
    """SIGTERM ends this worker process at once, as SIGKILL does (the driver recovers from either; a worker keeps
    nothing the group needs). Ray's own handler raises SystemExit wherever Python happens to be: inside a finalizer
    or a weakref callback (an import's module lock) that exception cannot propagate, so Python prints it as
    "Exception ignored ... Traceback" to the worker's stderr, which Ray forwards to the driver's terminal, and the
    worker lives on until a SIGKILL (the raylet's, after its grace period). Seen at a run's end, when the raylet's
    SIGTERM caught a worker that ``ray.kill`` was ending."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@ray.remote(concurrency_groups={"control": 1})
class WorkerActor:
    """Work runs one call at a time in the default lane; ``request_stop`` has a lane of its own, so it lands
    while a ``train_chunk`` runs (the engine reads the flag between steps)."""

    def __init__(self, config_yaml: str, threads: int) -> None:
        die_on_sigterm()  # first: the imports below are where a SIGTERM is most likely to land
        import torch

        from absa_cli import config as config_mod
        from absa_cli.worker.accel import pick_device
        from absa_cli.worker.engine import Engine

        if threads > 0:
            torch.set_num_threads(threads)
        self.config = config_mod.from_yaml(config_yaml)
        self.engine = Engine(self.config, device=pick_device())
        self.training_set = self.engine.train_set.identity()  # here, as a spare starts ahead, not in ready(): a grow
        # waits for its newcomers' ready() (ImageNet's 1.28M file names take about a second to digest)
        self.generation = -1

    def __repr__(self) -> str:
        """Ray's prefix for this actor's log lines (``(absa-<run>-worker3 rank=1 gen=2 pid=...)``)."""
        return getattr(self, "label", "") or (ray.get_runtime_context().get_actor_name() or "absa-worker")

    def _announce(self, where: str) -> None:
        """From now on, Ray prefixes this worker's log lines with its name, rank and generation (Ray's log
        monitor reads a line starting with its actor-name marker from the worker's stdout and stderr)."""
        from ray._private.ray_constants import LOG_PREFIX_ACTOR_NAME

        self.label = f"{ray.get_runtime_context().get_actor_name() or 'absa-worker'} {where}"
        print(LOG_PREFIX_ACTOR_NAME + self.label, flush=True)
        print(LOG_PREFIX_ACTOR_NAME + self.label, file=sys.stderr, flush=True)

    def ready(self) -> dict[str, Any]:
        from absa_cli.worker.accel import device_name

        return {"pid": os.getpid(), "host": socket.gethostname(), "node_ip": ray.util.get_node_ip_address(),
                "node_id": ray.get_runtime_context().get_node_id(), "device": str(self.engine.device),
                "device_name": device_name(self.engine.device),
                "gpu_ids": [str(gpu) for gpu in ray.get_gpu_ids()], "num_parameters": self.engine.num_parameters,
                "training_set": self.training_set}

    def free_port(self) -> int:
        with socket.socket() as probe:
            probe.bind(("", 0))
            return probe.getsockname()[1]

    def join(self, generation: int, rank: int, world_size: int, address: str, port: int, timeout_s: float,
             sample_log_dir: str = "") -> None:
        """Leave the previous process group (if any) and join generation ``generation`` as ``rank``."""
        import torch
        import torch.distributed as dist

        from absa_cli.dist import TorchDistContext

        if dist.is_initialized():
            dist.destroy_process_group()
        if rank != 0:
            _wait_for_listener(address, port, timeout_s)
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend, init_method=f"tcp://{address}:{port}", rank=rank,
                                world_size=world_size, timeout=timedelta(seconds=timeout_s))
        self.engine.set_context(TorchDistContext())
        self.generation = generation
        self._announce(f"rank={rank} gen={generation}")
        if sample_log_dir and self.engine.audit is None:
            from absa_cli.worker.audit import SampleAudit

            self.engine.audit = SampleAudit(Path(sample_log_dir) / f"samples-pid{os.getpid()}.jsonl")

    def train_chunk(self, *args: Any) -> Any:
        return self.engine.train_chunk(*args)

    @ray.method(concurrency_group="control")
    def request_stop(self) -> None:
        self.engine.stop_requested = True

    def position(self) -> tuple[int, int, int, float, int]:
        """(epoch, samples_seen, steps completed in the last chunk, their loss sum, their correct predictions) after
        the last applied step; the sums are over all ranks (reduced with each step)."""
        return (*self.engine.position, self.engine.chunk_steps_done, *self.engine.chunk_sums)

    def evaluate(self) -> Any:
        return self.engine.evaluate()

    def probe(self, epoch: int, draw: int = 0) -> Any:
        return self.engine.probe(epoch, draw=draw)

    def state_dict(self) -> dict:
        return self.engine.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.engine.load_state_dict(state)

    def num_train_samples(self) -> int:
        return self.engine.num_train_samples

    def hessian(self, options: Any, state: dict) -> dict:
        """``absa hessian`` on this worker's shard; every rank returns the same (all-reduced) result."""
        from absa_cli.worker import hessian as hessian_mod

        self.engine.model.load_state_dict(state["model"])
        batches = hessian_mod.probe_batches(self.config, options, self.engine.ctx)
        device = self.engine.device
        batches = [(inputs.to(device), labels.to(device)) for inputs, labels in batches]
        return hessian_mod.analyse(self.engine.model, batches, options, self.engine.ctx)

    def leave(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
