"""A worker group of one, in this process (``--local``, tests, debugging).

It has the interface of the Ray worker group, so the controller's epoch loop is the same code either way.
"""

from __future__ import annotations

from absa_cli.config import RunConfig
from absa_cli.engine import ChunkStats, Engine, EvalStats, ProbeStats
from absa_cli.geometry import BatchGeometry


class LocalGroup:
    num_workers = 1

    def __init__(self, config: RunConfig) -> None:
        self.engine = Engine(config)

    def capacity(self) -> int:
        return 1

    def resize(self, num_workers: int) -> None:
        if num_workers != 1:
            raise ValueError(f"a local run has exactly one worker, not {num_workers}")
        return None

    @property
    def num_train_samples(self) -> int:
        return self.engine.num_train_samples

    def train_chunk(self, epoch: int, samples_seen: int, lrs: list[float], geometry: BatchGeometry,
                    adv_ratio: float = 0.0) -> ChunkStats:
        return self.engine.train_chunk(epoch, samples_seen, lrs, geometry, adv_ratio)

    def probe(self, epoch: int) -> ProbeStats:
        return self.engine.probe(epoch)

    def evaluate(self) -> EvalStats:
        return self.engine.evaluate()

    def state_dict(self) -> dict:
        return self.engine.state_dict()

    def request_stop(self) -> None:
        """From a signal handler: the engine stops after the step in progress."""
        self.engine.stop_requested = True

    def restart(self, num_workers: int, state: dict) -> None:
        self.engine.load_state_dict(state)

    def close(self) -> None:
        pass
