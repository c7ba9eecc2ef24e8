"""A worker group of one, in this process (``--local``, tests, benchmarks, debugging).

It implements the worker-group contract (``driver/contract.py``), so the controller's epoch loop is the same code
as on Ray. One worker is all it ever offers: asked for more, it reports a ``Shortfall`` and the controller
accumulates instead.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from absa_cli.config import RunConfig
from absa_cli.decide.geometry import BatchGeometry
from absa_cli.driver.contract import ResizeResult, Shortfall, Unchanged
from absa_cli.worker.accel import device_name
from absa_cli.worker.audit import SampleAudit
from absa_cli.worker.engine import ChunkStats, Engine, EvalStats, ProbeStats


class LocalGroup:
    num_workers = 1

    def __init__(self, config: RunConfig) -> None:
        self.engine = Engine(config)
        if config.logging.sample_log_dir:  # the same audit a Ray worker keeps, as this process's file
            self.engine.audit = SampleAudit(Path(config.logging.sample_log_dir) / f"samples-pid{os.getpid()}.jsonl")

    def capacity(self) -> int:
        return 1

    def describe_capacity(self) -> str:
        return "one worker, in this process"

    def name(self, run_id: str) -> None:
        """Nothing to name: the worker is this process."""

    def report_to(self, say: Any) -> None:
        """Nothing to wait for: the worker is this process."""

    def prepare(self, num_workers: int) -> None:
        """Nothing to start ahead: there is only this process."""

    def record_sink(self, run_id: str) -> None:
        return None

    def demand(self, num_workers: int) -> bool:
        """No cluster to ask: the one worker is this process."""
        return False

    def notices(self) -> list[str]:
        return []

    def devices(self) -> list[str]:
        return [device_name(self.engine.device)]

    def num_parameters(self) -> int:
        return self.engine.num_parameters

    def resize(self, num_workers: int, within_s: float | None = None) -> ResizeResult:
        if num_workers == 1:  # the one worker is this process, started already: nothing to wait for
            return Unchanged(1)
        return Shortfall(requested=num_workers, available=1, reason="a local run has one worker")

    @property
    def num_train_samples(self) -> int:
        return self.engine.num_train_samples

    @functools.cached_property
    def training_set(self) -> dict[str, Any]:
        return self.engine.train_set.identity()

    def train_chunk(self, epoch: int, samples_seen: int, lrs: list[float], geometry: BatchGeometry,
                    adv_ratio: float = 0.0) -> ChunkStats:
        return self.engine.train_chunk(epoch, samples_seen, lrs, geometry, adv_ratio)

    def probe(self, epoch: int, draw: int = 0) -> ProbeStats:
        return self.engine.probe(epoch, draw=draw)

    def evaluate(self) -> EvalStats:
        return self.engine.evaluate()

    def state_dict(self) -> dict:
        return self.engine.state_dict()

    def request_stop(self) -> None:
        """From a signal handler: the engine stops after the step in progress."""
        self.engine.stop_requested = True

    def restart(self, state: dict | None) -> None:
        if state is None:  # from the seed: a new engine (this process's own, so never lost; for the contract)
            audit, self.engine = self.engine.audit, Engine(self.engine.config)
            self.engine.audit = audit
            return
        self.engine.load_state_dict(state)

    def close(self) -> None:
        if self.engine.audit is not None:
            self.engine.audit.close()
