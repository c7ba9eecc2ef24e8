"""A run resumed on another worker count against the uninterrupted run: how far apart do they end?

For each case and seed, through the real CLI (``absa train`` / ``absa resume`` subprocesses) on one Ray cluster:

- **reference**: ``absa train PRESET OVERRIDES --max-gpus 2``, uninterrupted;
- **stopped**: the same command, SIGKILLed as soon as the epoch-``--stop-after`` checkpoint is in the manifest (the
  driver dies without a word, as in ``tests/test_resume_cluster.py``); its run directory is copied;
- **other count**: the stopped run resumed with ``absa resume RUN_ID --max-gpus 1``;
- **same count** (the control, ``--no-control`` skips it): the copy resumed with ``--max-gpus 2``, which must end
  equal to the reference (the resume itself is exact).

Compared at the end (``epoch-NNNN.pt`` of the last epoch against the reference's), over the model's floating-point
tensors (parameters and BatchNorm statistics): the largest per-tensor relative L2 difference ‖a − b‖ / ‖b‖ (what
``tests/test_resume_cluster.py`` asserts), the whole-model relative L2 difference (all tensors concatenated), the
largest absolute difference and whether every tensor is bitwise equal; then the final test accuracy, and whether
the schedule is the same: every epoch's (global batch, LR, updates). The largest per-tensor difference is also given
after every epoch from the stop on, to show how training amplifies a first difference. The geometries (workers ×
micro-batch × accumulation steps) of the epochs after the stop are printed for both runs, since whether the
micro-batch size changes with the worker count decides what differs (docs/runs.md, "Exactness").

Cases (``--cases``):

- ``quickstart``: the preset as shipped, ``epochs=N`` (``--epochs``); ``quickstart-10`` (not run by default): its
  whole 10 epochs;
- ``dropout``: ``model.name=alexnet`` (the one model with dropout layers), ``policy.name=fixed`` at global batch
  256, 4,096 samples: 2 workers × 128 against 1 × 128 × 2, the same micro-batches;
- ``order``: the run of ``tests/test_resume_cluster.py`` (batch 64 on 1 worker, 128 on 2, then 256 on 2 × 64 × 2;
  2,048 samples), stopped after epoch 1 as the test stops it: after it, 2 workers × 64 × 1 against 1 × 64 × 2 (the
  same two terms), then 2 × 64 × 2 against 1 × 64 × 4, the same micro-batches summed in another order;
- ``microbatch``: ``policy.name=fixed``, global batch 192 at most 64 per worker: 2 workers × 48 × 2 against
  1 × 64 × 3, so every BatchNorm layer normalises other groups of samples (another computation, not only another
  order).

Every run keeps all its checkpoints (``checkpoint.keep_last=20``). A local Ray cluster with 6 CPU slots is started
in this process unless ``--address``/``RAY_ADDRESS`` names one; each worker runs 1 torch thread. Run it inside
``unshare --user --map-root-user --net`` (as below) so that the cluster listens on loopback only. Results are
rewritten to ``--json`` after every (case, seed), so a stopped benchmark keeps what it measured.

    unshare --user --map-root-user --net -- .venv/bin/python benchmarks/resume_worker_count.py
        [--cases quickstart dropout order microbatch] [--seeds 0 1] [--epochs 4] [--stop-after 2] [--no-control]
        [--address ADDR] [--runs-dir DIR] [--json results.json]
    .venv/bin/python benchmarks/resume_worker_count.py --tables-from results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

CASES = {  # name: (overrides after the preset's and ``epochs=N``, epoch after which the stopped run is killed)
    "quickstart": ([], None),
    "quickstart-10": (["epochs=10"], None),
    "dropout": (["model.name=alexnet", "policy.name=fixed", "data.train_size=4096", "batch.global_batch_size=256"],
                None),
    # tests/test_resume_cluster.py's run (RUN there), stopped where the test stops it; its probe batch of 32 (not
    # 128) changes no training state, and policy.duration=1 grows the batch whatever λ reads, so the models are
    # those measured in docs/benchmarks.md with 128
    "order": (["epochs=4", "data.train_size=2048", "data.test_size=128", "batch.global_batch_size=64",
               "batch.per_worker_max=64", "logging.chunk_steps=2", "policy.duration=1", "policy.max_global_batch=256",
               "cluster.collective_timeout_s=20", "probe.batch_size=32"], 1),
    "microbatch": (["policy.name=fixed", "data.train_size=2304", "batch.global_batch_size=192",
                    "batch.per_worker_max=64"], None),
}
DEFAULT_CASES = ["quickstart", "dropout", "order", "microbatch"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=DEFAULT_CASES)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="training seeds (config key `seed`)")
    p.add_argument("--epochs", type=int, default=4, help="epochs of every run (default: 4)")
    p.add_argument("--stop-after", type=int, default=2,
                   help="SIGKILL the stopped run after this epoch's checkpoint (the order case: after epoch 1)")
    p.add_argument("--no-control", action="store_true", help="skip the same-worker-count resume")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="a Ray cluster (default: start one)")
    p.add_argument("--runs-dir", type=Path, help="keep the runs here (default: a temporary folder)")
    p.add_argument("--json", type=Path, help="write the results here after every (case, seed)")
    p.add_argument("--tables-from", type=Path, help="print the tables of a --json file and exit")
    return p.parse_args(argv)


class Driver:
    """An ``absa`` subprocess; its output is collected as it comes."""

    def __init__(self, *args: str, address: str) -> None:
        env = {**os.environ, "RAY_ADDRESS": address}
        self.process = subprocess.Popen([sys.executable, "-m", "absa_cli", *args], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def run_id(self, timeout: float = 300.0) -> str:
        deadline = time.monotonic() + timeout
        while not any(line.startswith("run: ") for line in self.lines):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("no run id:\n" + "\n".join(self.lines[-30:]))
            time.sleep(0.05)
        return next(line for line in self.lines if line.startswith("run: ")).split()[1]

    def finish(self, timeout: float = 900.0) -> int:
        try:
            code = self.process.wait(timeout=timeout)
        finally:
            self.process.kill()
        self._reader.join(timeout=10)
        return code

    def check(self, what: str) -> None:
        code = self.finish()
        if code != 0:
            raise RuntimeError(f"{what} exited {code}:\n" + "\n".join(self.lines[-30:]))


def _checkpointed(run_dir: Path, epoch: int) -> bool:
    manifest = run_dir / "checkpoints" / "manifest.json"
    try:
        entries = json.loads(manifest.read_text())["checkpoints"]
    except (OSError, ValueError, KeyError):
        return False
    return any(e.get("epoch") == epoch and not e.get("samples_seen") for e in entries)


def _wait_for_free_slots(slots: float, timeout: float = 120.0) -> None:
    import ray

    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0) < slots:
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {slots} free CPU slots after {timeout:.0f} s: {ray.available_resources()}")
        time.sleep(0.2)


def compare_models(got: dict, want: dict) -> dict[str, Any]:
    """Per-tensor and whole-model differences over the floating-point tensors of two state dicts."""
    import torch

    names = [n for n in want if want[n].is_floating_point()]
    per_tensor, worst, max_abs, equal = 0.0, "", 0.0, True
    diff_sq, norm_sq = 0.0, 0.0
    for name in names:
        a, b = got[name].double(), want[name].double()
        d = (a - b).norm().item()
        diff_sq, norm_sq = diff_sq + d * d, norm_sq + b.norm().item() ** 2
        equal = equal and torch.equal(got[name], want[name])
        max_abs = max(max_abs, (a - b).abs().max().item() if a.numel() else 0.0)
        if b.norm().item() > 0 and d / b.norm().item() > per_tensor:
            per_tensor, worst = d / b.norm().item(), name
    return {"max_tensor_rel": per_tensor, "worst_tensor": worst, "model_rel": (diff_sq / norm_sq) ** 0.5,
            "max_abs": max_abs, "bitwise_equal": equal}


def by_epoch(runs: Path, result: dict[str, Any]) -> list[float]:
    """The largest per-tensor relative difference after every epoch from the stop on (every checkpoint is kept)."""
    from absa_cli.run import checkpoint

    gaps = []
    for epoch in range(result["stop_after"] + 1, len(result["reference_geometry"]) + 1):
        name = f"epoch-{epoch:04d}.pt"
        gaps.append(compare_models(checkpoint.load(runs / result["other"]["run"] / "checkpoints" / name)["model"],
                                   checkpoint.load(runs / result["reference"] / "checkpoints" / name)["model"])
                    ["max_tensor_rel"])
    return gaps


def _epochs(run_dir: Path) -> list[dict]:
    from absa_cli.run.rundir import RunDir

    return RunDir(run_dir).records("epoch")


def _schedule(epochs: list[dict]) -> list[tuple]:
    return [(r["epoch"], r["global_batch_size"], r["lr"], r["updates"]) for r in epochs]


def _geometry(record: dict) -> str:
    return " + ".join(f"{g['num_workers']}×{g['per_worker_batch_size']}×{g['grad_accum_steps']}"
                      for g in record["geometries"])


def one(case: str, seed: int, args: argparse.Namespace, address: str, runs: Path) -> dict[str, Any]:
    """The reference, the stopped run, and its resumes, for one case and seed."""
    from absa_cli.run import checkpoint

    extra, stop_after = CASES[case]
    stop_after = stop_after or args.stop_after
    overrides = [f"epochs={args.epochs}", *extra, f"seed={seed}", "checkpoint.keep_last=20"]
    epochs = int([o for o in overrides if o.startswith("epochs=")][-1].split("=")[1])
    train = ["train", "quickstart", *overrides, "--max-gpus", "2", "--runs-dir", str(runs)]
    started = time.perf_counter()
    reference, stopped = Driver(*train, address=address), Driver(*train, address=address)
    ref_id, stop_id = reference.run_id(), stopped.run_id()
    deadline = time.monotonic() + 900
    while not _checkpointed(runs / stop_id, stop_after):
        if stopped.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the stopped run ended first:\n" + "\n".join(stopped.lines[-30:]))
        time.sleep(0.05)
    stopped.process.send_signal(signal.SIGKILL)
    stopped.finish()
    copy_id = f"{stop_id}-same-count"
    shutil.copytree(runs / stop_id, runs / copy_id)
    # the dead driver's actors go within seconds; the resumes must find their workers' slots free at once (a run
    # short of slots starts on fewer workers and grows later, which would change the geometry under test)
    _wait_for_free_slots(1 if args.no_control else 3)
    resumes = {"other": Driver("resume", stop_id, "--max-gpus", "1", "--runs-dir", str(runs), address=address)}
    if not args.no_control:
        resumes["same"] = Driver("resume", copy_id, "--max-gpus", "2", "--runs-dir", str(runs), address=address)
    reference.check("the reference run")
    for name, driver in resumes.items():
        driver.check(f"the {name}-count resume")
    last = f"epoch-{epochs:04d}.pt"
    want = checkpoint.load(runs / ref_id / "checkpoints" / last)["model"]
    want_epochs = _epochs(runs / ref_id)
    result: dict[str, Any] = {"case": case, "seed": seed, "overrides": overrides, "stop_after": stop_after,
                              "reference": ref_id,
                              "reference_geometry": [_geometry(r) for r in want_epochs],
                              "reference_test_acc": want_epochs[-1]["test_acc"],
                              "seconds": None}
    for name, run_id in (("other", stop_id), ("same", copy_id)):
        if name not in resumes:
            continue
        records = _epochs(runs / run_id)
        got = checkpoint.load(runs / run_id / "checkpoints" / last)["model"]
        result[name] = {"run": run_id, **compare_models(got, want),
                        "same_schedule": _schedule(records) == _schedule(want_epochs),
                        "schedule": _schedule(records), "geometry": [_geometry(r) for r in records],
                        "test_acc": records[-1]["test_acc"],
                        "test_acc_diff": records[-1]["test_acc"] - want_epochs[-1]["test_acc"]}
    result["other"]["by_epoch"] = by_epoch(runs, result)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def tables(results: list[dict[str, Any]]) -> str:
    rows = ["| case | seed | stopped after epoch | later epochs: 2 workers → resumed on 1 (W × b × A) | "
            "same batch, LR, updates | max per-tensor rel. diff, by epoch | at the end | whole-model rel. diff | "
            "max abs diff | test acc: reference → resumed | same-count resume |", "|---" * 11 + "|"]
    for r in results:
        other, same, stop = r["other"], r.get("same"), r["stop_after"]
        geometry = f"{', '.join(r['reference_geometry'][stop:])} → {', '.join(other['geometry'][stop:])}"
        control = "—" if same is None else ("bitwise equal" if same["bitwise_equal"] else
                                            f"max abs {same['max_abs']:.2g}")
        worst = f" ({other['worst_tensor']})" if other["worst_tensor"] else ""
        schedule = "yes" if other["same_schedule"] else "NO"
        steps = ", ".join("0" if gap == 0 else f"{gap:.1e}" for gap in other.get("by_epoch", []))
        rows.append(f"| {r['case']} | {r['seed']} | {stop} | {geometry} | {schedule} | {steps} | "
                    f"{other['max_tensor_rel']:.2%}{worst} | {other['model_rel']:.2%} | {other['max_abs']:.3g} | "
                    f"{r['reference_test_acc']:.1%} → {other['test_acc']:.1%} | {control} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.tables_from:
        data = json.loads(args.tables_from.read_text())
        for result in data["results"]:
            result.setdefault("stop_after", data["stop_after"])
            if "by_epoch" not in result["other"] and Path(data["runs_dir"]).is_dir():
                result["other"]["by_epoch"] = by_epoch(Path(data["runs_dir"]), result)
        print(tables(data["results"]))
        return 0
    from absa_cli.cluster import netns
    from absa_cli.cluster.runtime import connect

    if not args.address and netns.interfaces() == ["lo"]:  # run inside `unshare --net`: bring loopback up
        netns.loopback_up()
    print(connect(args.address, num_cpus=None if args.address else 6), flush=True)
    import ray

    address = args.address or ray.get_runtime_context().gcs_address
    runs = args.runs_dir or Path(tempfile.mkdtemp(prefix="absa-resume-count-"))
    header = {"started": datetime.now().isoformat(timespec="seconds"), "machine": platform.platform(),
              "cpus": os.cpu_count(), "load_at_start": os.getloadavg(), "epochs": args.epochs,
              "stop_after": args.stop_after, "command": " ".join(sys.argv), "runs_dir": str(runs)}
    results: list[dict[str, Any]] = []
    for seed in args.seeds:  # seed by seed, every case in turn
        for case in args.cases:
            result = one(case, seed, args, address, runs)
            results.append(result)
            print(json.dumps({k: v for k, v in result.items() if k not in ("other", "same")}), flush=True)
            print(tables([result]).splitlines()[-1], flush=True)
            if args.json:
                args.json.write_text(json.dumps({**header, "load_now": os.getloadavg(), "results": results},
                                                indent=1))
    print(f"\nload average at the start {header['load_at_start'][0]:.2f}, at the end {os.getloadavg()[0]:.2f}")
    print(tables(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
