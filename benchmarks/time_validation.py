"""Predicted vs measured wall time of real local runs: the step-time model checked on this machine.

1. ``absa calibrate quickstart --max-gpus 2`` measures a profile (it times steps, an evaluation, a probe, a
   checkpoint and the group's start) — before any of the runs below.
2. Each run's wall time is predicted from that profile alone: ``fixed`` trains at batch 128 throughout (its schedule
   is known before it runs); the quickstart's ABSA schedule depends on the curvature, so it gets the plan's two
   envelopes (growth at every probe, growth only by ``policy.duration``) before it runs, and, after it ran, the
   prediction for the batch schedule it actually took (the model's error alone, not the policy's).
3. The runs: ``absa train quickstart [policy.name=fixed] --max-gpus N`` for N = 1, 2, each in a subprocess, one
   after another; measured = the run's ``wall_s`` (run.json: first worker start to the last checkpoint).

    .venv/bin/python benchmarks/time_validation.py [--json results.json] [--runs-dir DIR]

Run it on an otherwise idle machine: on 2 cores any other process slows both the calibration and the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from absa_cli.errors import counted

# fixed on two workers: batch 128 is split 2 × 64 (with the preset's per-worker maximum of 128 it would use one)
RUNS = [("absa", 1, []), ("absa", 2, []), ("fixed", 1, ["policy.name=fixed"]),
        ("fixed", 2, ["policy.name=fixed", "batch.per_worker_max=64"])]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--runs-dir", type=Path, help="where the runs go (default: a temporary folder)")
    p.add_argument("--overrides", nargs="*", default=[], help="KEY=VALUE overrides for every run and the calibration")
    return p.parse_args()


def absa(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "absa_cli", *args], check=True, stdout=subprocess.DEVNULL)


def predict(config, model, batches: list[int], workers: int) -> float:
    from absa_cli import catalog
    from absa_cli.decide.policy import ADAPTIVE_POLICIES
    from absa_cli.decide.timeline import time_schedule

    spec = catalog.dataset_spec(config.data.name)
    adaptive = config.policy.name in ADAPTIVE_POLICIES  # rechecks as absa plan charges them: at every later probe
    return time_schedule(config, model, batches, spec.train_size(config.data.train_split, config.data.train_size),
                         config.data.test_size or spec.num_test, workers, probes=adaptive, adversarial=True,
                         rechecks=config.policy.recheck if adaptive else 0)["seconds"]


def main() -> None:
    args = parse_args()
    from absa_cli import config as config_mod
    from absa_cli.decide.replay import schedule_bounds
    from absa_cli.run import profile as profiles
    from absa_cli.run.rundir import RunDir

    root = args.runs_dir or Path(tempfile.mkdtemp(prefix="absa-time-"))
    root.mkdir(parents=True, exist_ok=True)
    profile = root / "quickstart.profile.json"
    absa("calibrate", "quickstart", *args.overrides, "--max-gpus", "2", "-o", str(profile))
    model = profiles.load(profile)
    rows = []
    for name, workers, extra in RUNS:
        config = config_mod.load("quickstart", [*args.overrides, *extra])
        config.cluster.max_workers = workers
        bounds = schedule_bounds(config)
        before = sorted({predict(config, model, bounds.fastest, workers),
                         predict(config, model, bounds.slowest, workers)})
        runs_dir = root / f"{name}-{workers}"
        absa("train", "quickstart", *args.overrides, *extra, "--max-gpus", str(workers), "--runs-dir", str(runs_dir))
        (run,) = [RunDir(path) for path in runs_dir.iterdir() if path.is_dir()]
        taken = [r["global_batch_size"] for r in run.records("epoch")]
        measured = run.info()["wall_s"]
        after = predict(config, model, taken, workers)
        rows.append({"run": name, "workers": workers, "predicted_before_s": before, "predicted_schedule_s": after,
                     "measured_s": measured, "error": after / measured - 1, "schedule": taken})
        print(f"{name} on {workers}: predicted {' – '.join(f'{s:.1f}' for s in before)} s before, "
              f"{after:.1f} s for the schedule taken; measured {measured:.1f} s ({100 * (after / measured - 1):+.1f}%)",
              flush=True)
    print("| run | predicted before it ran | predicted for the schedule it took | measured | error |")
    print("|---|---|---|---|---|")
    for r in rows:
        before = " – ".join(f"{s:.1f} s" for s in r["predicted_before_s"])
        print(f"| `{r['run']}`, {counted(r['workers'], 'worker')} | {before} | {r['predicted_schedule_s']:.1f} s | "
              f"{r['measured_s']:.1f} s | {100 * r['error']:+.1f}% |")
    print(f"(profile {profile}; load {os.getloadavg()[0]:.2f} at the end; {datetime.now().isoformat(timespec='seconds')})")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "profile": json.loads(profile.read_text())}, indent=2))


if __name__ == "__main__":
    main()
