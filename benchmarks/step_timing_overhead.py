"""What the always-on step timing (absa_cli/worker/timing.py) costs: the quickstart's training steps with it and
with a timer that does nothing, side by side.

One engine of the quickstart preset (one worker, in this process, the model and batch `absa train quickstart`
starts with: C1 at half width, global batch 128) trains ``--chunks`` chunks of ``--steps`` steps; the two timers
alternate chunk by chunk (ABAB…), so machine load and the model's own drift hit both alike, and the first chunk of
each is dropped as warm-up. Reported: the median chunk time with each, and the overhead (with / without − 1). On
CUDA the timer records events and reads them once per chunk; this script measures whichever device torch picks.

    .venv/bin/python benchmarks/step_timing_overhead.py [--chunks 40] [--steps 4] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chunks", type=int, default=40, help="chunks per timer (the first of each is warm-up)")
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per chunk (logging.chunk_steps)")
    p.add_argument("--overrides", nargs="*", default=[], help="extra KEY=VALUE config overrides")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args(argv)


class NullTimer:
    """The timer's interface, doing nothing: the baseline."""

    def __init__(self, device) -> None:
        pass

    def start(self) -> None:
        pass

    def lap(self, phase: str) -> None:
        pass

    def totals(self) -> list[float]:
        return [0.0, 0.0, 0.0, 0.0]


def measure(args: argparse.Namespace) -> dict:
    import torch

    from absa_cli import config as config_mod
    from absa_cli.decide.geometry import BatchGeometry
    from absa_cli.worker import engine as engine_mod
    from absa_cli.worker.timing import StepTimer

    config = config_mod.load("quickstart", ["policy.name=fixed", *args.overrides])
    engine = engine_mod.Engine(config)
    batch = config.batch.global_batch_size
    geometry = BatchGeometry.plan(batch, 1, config.batch.per_worker_max)
    steps_per_epoch = engine.num_train_samples // batch
    times: dict[str, list[float]] = {"timed": [], "untimed": []}
    position, epoch = 0, 0
    for index in range(2 * args.chunks):
        name = "timed" if index % 2 == 0 else "untimed"
        engine_mod.StepTimer = StepTimer if name == "timed" else NullTimer
        if position + args.steps > steps_per_epoch:
            position, epoch = 0, epoch + 1
        started = time.perf_counter()
        engine.train_chunk(epoch, position * batch, [config.optim.lr] * args.steps, geometry)
        times[name].append(time.perf_counter() - started)
        position += args.steps
    engine_mod.StepTimer = StepTimer
    timed, untimed = statistics.median(times["timed"][1:]), statistics.median(times["untimed"][1:])
    return {"device": str(engine.device), "threads": torch.get_num_threads(), "chunks": args.chunks,
            "steps": args.steps, "timed_chunk_s": timed, "untimed_chunk_s": untimed,
            "overhead": timed / untimed - 1.0}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = measure(args)
    result.update(machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                  load=os.getloadavg()[0], when=datetime.now().isoformat(timespec="seconds"),
                  command=" ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]))
    print(f"| device | steps/chunk | chunk, timed | chunk, untimed | overhead |")
    print(f"|---|---|---|---|---|")
    print(f"| {result['device']} ({result['threads']} threads) | {result['steps']} | {result['timed_chunk_s']:.4f} s "
          f"| {result['untimed_chunk_s']:.4f} s | {100 * result['overhead']:+.2f}% |")
    print(f"({result['chunks']} chunks each, medians; load {result['load']:.2f}; {result['machine']})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
