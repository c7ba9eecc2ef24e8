"""Live resize of the Ray worker group against a restart from a checkpoint, side by side in one run.

Part 1, one transition at a time, for ResNet-20 (``OVERRIDES``: global batch 128, at most 64 per worker, so the
same 128 samples make one step on 1 worker (2 accumulation steps) or on 2 workers):

- **live, warm** 1 → 2: absa's path. ``group.prepare(2)`` starts the spare actor ahead of time (in a run, while the
  epoch before trains) and the script waits until it is ready; then ``group.resize(2)`` re-forms the process group
  and sends rank 0's in-memory state to the newcomer.
- **live, cold** 1 → 2: ``group.resize(2)`` with no spare, so the newcomer's start-up (torch import, data, model)
  is paid inside the resize.
- **live** 2 → 1: ``group.resize(1)`` retires one actor and re-forms; the survivor keeps everything.
- **restart** 1 → 2 and 2 → 1, the way Ray Train's elastic mode resizes: fetch the state from rank 0 and write it
  with ``absa_cli.run.checkpoint.save``, shut every actor down (``group.close()``), start a new group of the target
  size and load the file into it (``RayWorkerGroup(...).start(n, state=checkpoint.load(path))``).

Every transition ends with the first training step at the new size (one ``train_chunk`` of one step, timed on the
driver, so it includes the Ray call), and a second step is timed for reference ("steady step"); "overhead" is
total − steady step, i.e. what the transition costs beyond the step it also trains. The transitions
run in one fixed cycle, ``--repeats`` times, so machine load hits them alike; the table gives medians.

Phases: for a live resize they are the fields of the group's own ``resize`` record (``actor_start_s``,
``rendezvous_s``, ``state_transfer_s``; retiring actors on a shrink counts under ``actor_start_s``). For a restart: shutdown + actor start (the group's
``_start``, timed by a wrapper), rendezvous (``_rendezvous``, wrapped likewise), and state = fetch from rank 0 +
checkpoint write + checkpoint read + loading it into the new actors.

Part 2 (skip with ``--skip-run``): ``absa train quickstart --runs-dir <tmp>`` (the Ray path) in a subprocess; the
share of its wall time spent in live resizes = Σ ``resize_s`` of its ``resize`` records / wall time, where wall
time is ``ended_at − started_at`` of its ``run.json`` (which excludes ``ray.init``; the subprocess's own wall time
is printed too). ``first_step_s`` is shown apart: that step trains, so only its excess over a steady step is
overhead. ``--run-cpus N`` makes the run join a local cluster with N CPU slots started by this script, instead of
the one absa starts with one slot per core.

Run it on an otherwise idle machine: on 2 cores every other process slows the actors' start-up.

    .venv/bin/python benchmarks/resize_overhead.py [--repeats 3] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

OVERRIDES = ["model.name=resnet20", "model.width=1.0", "policy.name=fixed", "data.train_size=2048",
             "data.test_size=256", "batch.global_batch_size=128", "batch.per_worker_max=64"]
PHASES = ("actor_s", "rendezvous_s", "state_s", "first_step_s")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="cycles of all transitions (medians are reported)")
    p.add_argument("--num-cpus", type=int, default=2, help="CPU slots of the local Ray cluster (2 workers at most)")
    p.add_argument("--skip-run", action="store_true", help="skip part 2 (the whole quickstart run)")
    p.add_argument("--run-preset", default="quickstart", help="preset of the whole run in part 2")
    p.add_argument("--run-cpus", type=int, help="part 2 joins (--address) a local Ray cluster with this many CPU "
                   "slots, started here, instead of letting absa start its own with one slot per core")
    p.add_argument("--json", type=Path, help="also write every number measured here")
    return p.parse_args()


def machine() -> dict[str, Any]:
    import ray
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "ray": ray.__version__,
            "python": platform.python_version(), "load_avg_1min_start": round(os.getloadavg()[0], 2),
            "date": time.strftime("%Y-%m-%d")}


class Bench:
    """The group under test, its step position and the geometry per worker count."""

    def __init__(self, config: Any, max_workers: int, workdir: Path) -> None:
        from absa_cli.decide.geometry import BatchGeometry

        self.config = config
        self.max_workers = max_workers
        self.workdir = workdir
        self.group = self._new_group()
        self.geometry = {n: BatchGeometry.plan(config.batch.global_batch_size, max_workers,
                                               config.batch.per_worker_max, available_workers=n)
                         for n in range(1, max_workers + 1)}
        self.epoch, self.samples_seen = 0, 0
        self.timings: dict[str, list[dict[str, float]]] = {}

    def _new_group(self) -> Any:
        from absa_cli.cluster.group import RayWorkerGroup

        return RayWorkerGroup(self.config)

    def step(self) -> float:
        """One optimizer step at the group's current size; driver-side seconds."""
        batch = self.config.batch.global_batch_size
        if self.samples_seen + batch > self.group.num_train_samples:
            self.epoch, self.samples_seen = self.epoch + 1, 0
        started = time.perf_counter()
        stats = self.group.train_chunk(self.epoch, self.samples_seen, [self.config.optim.lr],
                                       self.geometry[self.group.num_workers])
        seconds = time.perf_counter() - started
        self.samples_seen += stats.samples
        return seconds

    def record(self, name: str, phases: dict[str, float]) -> None:
        phases["first_step_s"] = self.step()
        phases["total_s"] = sum(phases[key] for key in PHASES)
        phases["steady_step_s"] = self.step()
        self.timings.setdefault(name, []).append(phases)
        print(f"  {name:<22} " + "  ".join(f"{k[:-2]} {v:6.3f}" for k, v in phases.items()), flush=True)

    def live(self, name: str, num_workers: int, warm: bool) -> None:
        import ray

        from absa_cli.driver.contract import Resized

        if warm:
            self.group.prepare(num_workers)
            ray.get([spare.ready.remote() for spare in self.group.spares])  # as if started an epoch before
            if len(self.group.spares) != num_workers - self.group.num_workers:
                raise RuntimeError(f"prepare({num_workers}) started {len(self.group.spares)} spare(s)")
        result = self.group.resize(num_workers)
        if not isinstance(result, Resized) or not result.live or self.group.num_workers != num_workers:
            raise RuntimeError(f"live resize to {num_workers} did not happen ({result})")
        self.record(name, {"actor_s": result.actor_start_s, "rendezvous_s": result.rendezvous_s,
                           "state_s": result.state_transfer_s})

    def restart(self, name: str, num_workers: int) -> None:
        from absa_cli.run import checkpoint

        path = self.workdir / "restart.pt"
        started = time.perf_counter()
        checkpoint.save(path, {**self.group.state_dict(), "epoch": self.epoch, "samples_seen": self.samples_seen})
        save_s = time.perf_counter() - started
        mark = time.perf_counter()
        self.group.close()  # every actor goes, as in Ray Train's elastic restart
        shutdown_s = time.perf_counter() - mark
        mark = time.perf_counter()
        state = checkpoint.load(path)
        read_s = time.perf_counter() - mark
        group = self._new_group()
        phase: dict[str, float] = {"_start": 0.0, "_rendezvous": 0.0}
        for method in phase:
            setattr(group, method, _timed(getattr(group, method), phase, method))
        mark = time.perf_counter()
        group.start(num_workers, state=state)
        start_total_s = time.perf_counter() - mark
        self.group = group
        load_s = start_total_s - phase["_start"] - phase["_rendezvous"]  # ray.put + load_state_dict on each actor
        self.record(name, {"actor_s": shutdown_s + phase["_start"], "rendezvous_s": phase["_rendezvous"],
                           "state_s": save_s + read_s + load_s})


def _timed(method: Callable, into: dict[str, float], key: str) -> Callable:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        mark = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            into[key] += time.perf_counter() - mark
    return wrapper


def measure_transitions(args: argparse.Namespace, workdir: Path) -> dict[str, list[dict[str, float]]]:
    import ray

    from absa_cli import config as config_mod
    from absa_cli.cluster.runtime import connect

    config = config_mod.load("quickstart", OVERRIDES)
    print(connect(num_cpus=args.num_cpus), flush=True)
    bench = Bench(config, max_workers=2, workdir=workdir)
    try:
        bench.group.start(1)
        bench.step()  # the first generation's first step: not a resize
        for repeat in range(args.repeats):
            print(f"cycle {repeat + 1}/{args.repeats}", flush=True)
            bench.live("live warm 1→2", 2, warm=True)
            bench.live("live 2→1", 1, warm=False)
            bench.live("live cold 1→2", 2, warm=False)
            bench.restart("restart 2→1", 1)
            bench.restart("restart 1→2", 2)
            bench.live("live 2→1", 1, warm=False)
    finally:
        bench.group.close()
        ray.shutdown()
    return bench.timings


def measure_run(preset: str, workdir: Path, num_cpus: int | None) -> dict[str, Any]:
    import logging

    import ray

    runs_dir = workdir / "runs"
    command = [sys.executable, "-m", "absa_cli", "train", preset, "--runs-dir", str(runs_dir)]
    if num_cpus:
        ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                 logging_level=logging.WARNING)
        command += ["--address", ray.get_runtime_context().gcs_address]
    print("$ " + " ".join(command[1:]), flush=True)
    started = time.perf_counter()
    try:
        subprocess.run(command, check=True)
    finally:
        if num_cpus:
            ray.shutdown()
    process_wall_s = time.perf_counter() - started
    (run_path,) = [path for path in runs_dir.iterdir() if path.is_dir()]
    info = json.loads((run_path / "run.json").read_text())
    records = [json.loads(line) for line in (run_path / "metrics.jsonl").read_text().splitlines() if line.strip()]
    resizes = [r for r in records if r["kind"] == "resize"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    wall_s = (datetime.fromisoformat(info["ended_at"]) - datetime.fromisoformat(info["started_at"])).total_seconds()
    resize_s = sum(r["resize_s"] for r in resizes)
    first_step_s = sum(r.get("first_step_s", 0.0) for r in resizes)
    return {"preset": preset, "ray_cpus": num_cpus or os.cpu_count(), "status": info.get("status"),
            "run_wall_s": wall_s, "process_wall_s": process_wall_s,
            "epoch_s_sum": sum(r["epoch_s"] for r in epochs), "resizes": resizes,
            "workers_per_epoch": [r["num_workers"] for r in epochs],
            "batch_per_epoch": [r["global_batch_size"] for r in epochs],
            "resize_s": resize_s, "first_step_s": first_step_s,
            "resize_share": resize_s / wall_s if wall_s else float("nan"),
            "resize_and_first_step_share": (resize_s + first_step_s) / wall_s if wall_s else float("nan")}


def medians(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(row[key] for row in rows) for key in rows[0]}


def table(timings: dict[str, list[dict[str, float]]]) -> str:
    med = {name: medians(rows) for name, rows in timings.items()}
    for m in med.values():  # what the transition costs beyond the step it also trains
        m["overhead_s"] = m["total_s"] - m["steady_step_s"]
    live_for = {"restart 1→2": ("live warm 1→2", "live cold 1→2"), "restart 2→1": ("live 2→1",)}
    lines = ["| transition | n | actor start/stop (s) | rendezvous (s) | state (s) | first step (s) | total (s) "
             "| steady step (s) | overhead (s) | restart / live: total | restart / live: overhead |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in ("live warm 1→2", "live cold 1→2", "restart 1→2", "live 2→1", "restart 2→1"):
        m = med[name]
        ratios = [" · ".join(f"{m[key] / med[live][key]:.1f}× {live.replace(' 1→2', '').replace(' 2→1', '')}"
                             for live in live_for.get(name, ())) or "—" for key in ("total_s", "overhead_s")]
        lines.append(f"| {name} | {len(timings[name])} | {m['actor_s']:.3f} | {m['rendezvous_s']:.3f} | "
                     f"{m['state_s']:.3f} | {m['first_step_s']:.3f} | **{m['total_s']:.3f}** | "
                     f"{m['steady_step_s']:.3f} | {m['overhead_s']:.3f} | {ratios[0]} | {ratios[1]} |")
    return "\n".join(lines)


def run_summary(run: dict[str, Any]) -> str:
    return (f"whole run `absa train {run['preset']}` on {run['ray_cpus']} Ray CPU slots ({run['status']}): "
            f"{len(run['resizes'])} live resize(s) "
            f"{[(r['from_workers'], r['to_workers']) for r in run['resizes']]}, workers per epoch "
            f"{run['workers_per_epoch']}, batch per epoch {run['batch_per_epoch']}; Σ resize_s "
            f"{run['resize_s']:.3f} s of {run['run_wall_s']:.0f} s run wall time (run.json; the process took "
            f"{run['process_wall_s']:.0f} s with ray.init) = **{100 * run['resize_share']:.3f} %**; with the first "
            f"step after each resize ({run['first_step_s']:.3f} s): {100 * run['resize_and_first_step_share']:.3f} %")


def main() -> None:
    args = parse_args()
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    about = machine()
    print(json.dumps(about), flush=True)
    with tempfile.TemporaryDirectory(prefix="absa-resize-bench-") as tmp:
        workdir = Path(tmp)
        timings = measure_transitions(args, workdir)
        run = None if args.skip_run else measure_run(args.run_preset, workdir, args.run_cpus)
    print()
    print(f"{about['date']}, {about['cpu']}, {about['cores']} cores, torch {about['torch']}, ray {about['ray']}, "
          f"load avg at start {about['load_avg_1min_start']}; ResNet-20, global batch 128 (≤ 64 per worker), "
          f"median of {args.repeats} cycles")
    print()
    print(table(timings))
    if run is not None:
        print()
        print(run_summary(run))
    if args.json:
        args.json.write_text(json.dumps({"machine": about, "overrides": OVERRIDES, "timings": timings,
                                         "medians": {k: medians(v) for k, v in timings.items()}, "run": run},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
