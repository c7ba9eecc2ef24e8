"""Training throughput of absa's step against a plain PyTorch loop on the same model, batch, data and device.

Contenders, one repetition (``--steps`` optimizer steps) of each in turn, ``--repeats`` times after one warm-up
repetition each, so that machine load hits them alike; the table gives medians and ratios to the plain loop:

- **plain**: the model from absa's registry (same seed, same initial weights), SGD with the same settings; a step
  is forward, cross-entropy, backward and ``optimizer.step`` on a slice of the training set's images, normalised
  once up front and held on the device: the tight loop anyone writes, the upper bound. It runs under the switches
  absa resolved (autocast dtype, channels_last, compile), so the ratio is absa's overhead, not a precision gap.
- **engine**: ``Engine.train_chunk`` of the same steps: epoch order, ``get_batch`` (gather, augmentation when the
  data has it, normalisation), the BatchNorm rule, the (no-op) all-reduce, the stop flag.
- **plain, synced** (``--synced-plain``): the plain loop reading its loss back after every step (``.item()``),
  as the engine reads its step's stop flag and statistics once a step: what that one synchronisation costs.
- **ray** (``--ray``): the same chunk through ``RayWorkerGroup`` with one worker actor, timed on the driver, so it
  includes the Ray call. The actor builds its data from the config, so this contender needs ``--data synthetic``
  at the catalogue's 32 px.

``--probe`` also times the curvature probe through the engine (Lanczos from a cold start, as the paper presets
probe, ``--probe-batch``, at most ``--probe-iters`` HVPs; median of ``--probe-repeats`` after a warm-up) and states
it against one training step and against one epoch of ``--epoch-samples`` at the engine's rate. (A warm start would
begin every repeat at the last repeat's converged eigenvector of the same weights and samples: one HVP.)

``--profile FILE`` then runs one more repetition of each contender under ``torch.profiler`` and writes where the
time goes to FILE (each contender's operators by self CPU time and by self device time); the printed table gives,
per step, the wall time under the profiler, the device's busy time (the sum of its kernels and copies), kernel
launches, host-device synchronisations and copies: the lead when the engine is slower than the plain loop. On a GPU
it also names the lines that synchronise (one more repetition under ``torch.cuda.set_sync_debug_mode``).

Data: ``synthetic``: uniform random pixels at ``--image-size`` (absa's ``synthetic`` set, no augmentation);
``augmented``: the same pixels with CIFAR's crop-and-flip (pad = size / 8) applied by absa on the device the data
lives on. Both are in-memory sets (``data.on_device`` applies).

``--run-dir DIR`` does something else: the probe's share of a finished run's training time, Σ probe_s / Σ epoch_s
over the epoch records of ``DIR/metrics.jsonl``.

    .venv/bin/python benchmarks/throughput.py --model c1 --batch 128 --device cpu --threads 1 --ray
    .venv/bin/python benchmarks/throughput.py --run-dir runs/<run-id>
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from absa_cli import config as config_mod  # noqa: E402
from absa_cli.catalog import DATASETS  # noqa: E402
from absa_cli.data import TensorImageDataset  # noqa: E402
from absa_cli.data.augment import CropFlip  # noqa: E402
from absa_cli.data.procedural import load_synthetic  # noqa: E402
from absa_cli.worker.engine import Engine  # noqa: E402
from absa_cli.decide.geometry import BatchGeometry  # noqa: E402
from absa_cli.models import build_model  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="c1")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=128, help="global batch = micro-batch (one worker, no accumulation)")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per timed repetition")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions of each contender (medians reported)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads, here and in the Ray worker")
    p.add_argument("--ray", action=argparse.BooleanOptionalAction, default=False, help="also the 1-worker Ray group")
    p.add_argument("--synced-plain", action="store_true", help="also the plain loop with one sync per step")
    p.add_argument("--data", choices=("synthetic", "augmented"), default="synthetic")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--amp", default="auto", help="device.amp for absa (auto | bf16 | off); the plain loop follows")
    p.add_argument("--channels-last", default="auto", help="device.channels_last (auto | on | off)")
    p.add_argument("--on-device", default="auto", help="data.on_device (auto | on | off)")
    p.add_argument("--compile", action="store_true", help="device.compile=true (and a compiled plain loop)")
    p.add_argument("--probe", action="store_true", help="also time one Lanczos probe")
    p.add_argument("--probe-batch", type=int, default=128)
    p.add_argument("--probe-iters", type=int, default=10)
    p.add_argument("--probe-repeats", type=int, default=3)
    p.add_argument("--epoch-samples", type=int, default=50_000, help="epoch size for the probe's share")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks that every part runs (CPU, seconds)")
    p.add_argument("--out", type=Path, help="also append the markdown tables to this file")
    p.add_argument("--title", help="a '## TITLE' heading above the tables")
    p.add_argument("--profile", type=Path, help="also profile one repetition of each contender; details to this file")
    p.add_argument("--run-dir", type=Path, help="only report the probe share of this finished run")
    args = p.parse_args(argv)
    if args.smoke:
        args.batch, args.steps, args.repeats = min(args.batch, 8), 2, 1
        args.image_size = min(args.image_size, 32)
        args.probe_batch, args.probe_iters, args.probe_repeats = 8, 2, 1
    if args.ray and (args.data != "synthetic" or args.image_size != DATASETS["synthetic"].image_size):
        p.error("--ray needs --data synthetic at 32 px: the Ray worker builds its data from the config")
    return args


# ------------------------------------------------------------------------------------------------- setup

def build_data(args: argparse.Namespace, num_train: int) -> tuple[TensorImageDataset, TensorImageDataset]:
    """absa's ``synthetic`` pixels at the asked size (the Ray worker's config-built set is the same at 32 px)."""
    spec = dataclasses.replace(DATASETS["synthetic"], image_size=args.image_size, num_classes=args.num_classes)
    train, test = (load_synthetic(spec, split, seed=0, size=size) for split, size in
                   (("train", num_train), ("test", args.batch)))
    if args.data == "augmented":
        augment = CropFlip(padding=args.image_size // 8, flip=True)
        train = TensorImageDataset(spec, "train", train.images, train.labels, augment)
    return train, test


def build_config(args: argparse.Namespace, num_train: int) -> config_mod.RunConfig:
    return config_mod.load("quickstart", [
        f"model.name={args.model}", f"model.width={args.width}", "data.name=synthetic",
        f"data.train_size={num_train}", f"data.test_size={args.batch}", "policy.name=fixed",
        f"batch.global_batch_size={args.batch}", f"batch.per_worker_max={args.batch}",
        f"policy.max_global_batch={max(args.batch, 1024)}", f"threads={args.threads}",
        f"device.amp={args.amp}", f"device.channels_last={args.channels_last}", f"data.on_device={args.on_device}",
        f"device.compile={str(args.compile).lower()}", "probe.method=lanczos", "probe.warm_start=false",
        f"probe.batch_size={args.probe_batch}",
        f"probe.max_iter={args.probe_iters}", "cluster.max_workers=1"])


def plain_loop(config: config_mod.RunConfig, engine: Engine, steps: int,
               synced: bool = False) -> Callable[[], None]:
    """The tight loop under the switches absa resolved; returns one repetition of ``steps`` steps. ``synced``: the
    host waits for each step's loss (one device synchronisation per step, as the engine's step has)."""
    accel, device, batch = engine.accel, engine.device, config.batch.global_batch_size
    spec = engine.train_set.spec
    torch.manual_seed(config.seed)
    model = accel.prepare_model(build_model(config.model.name, spec.num_classes, spec.image_size,
                                            width=config.model.width).to(device))
    forward = torch.compile(model) if accel.compile else model
    optim = config.optim
    optimizer = torch.optim.SGD(model.parameters(), lr=optim.lr, momentum=optim.momentum,
                                nesterov=optim.nesterov, weight_decay=optim.weight_decay)
    count = len(engine.train_set)
    inputs, labels = engine.train_set.get_batch(torch.arange(count), None)  # once, up front: not timed
    inputs, labels = accel.inputs(inputs.to(device)), labels.to(device)

    def run() -> None:
        model.train()
        loss_total = torch.zeros((), device=device)
        for step in range(steps):
            rows = slice(step * batch % count, step * batch % count + batch)
            with accel.autocast(accel.amp_dtype):
                loss = F.cross_entropy(forward(inputs[rows]), labels[rows])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_total += loss.detach()
            if synced:
                loss_total.item()
        loss_total.item()  # wait for the device, as train_chunk's final sync does

    return run


def ray_contender(config: config_mod.RunConfig, geometry: BatchGeometry, lrs: list[float]):
    from absa_cli.cluster.group import RayWorkerGroup
    from absa_cli.cluster.runtime import connect

    print(connect(num_cpus=max(2, os.cpu_count() or 2)), flush=True)
    group = RayWorkerGroup(config)  # cluster.max_workers=1
    group.resize(1)
    epochs = iter(range(1, 10**9))
    return (lambda: group.train_chunk(next(epochs), 0, lrs, geometry)), group


# ---------------------------------------------------------------------------------------------- measuring

def interleaved(contenders: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds per repetition of each contender, after one untimed warm-up each, round-robin."""
    for run in contenders.values():
        run()
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, run in contenders.items():
            started = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - started)
    return seconds


def time_probe(engine: Engine, repeats: int) -> tuple[float, int]:
    """(median seconds, HVPs) of one probe, after a warm-up that also builds the probe batches."""
    engine.probe(0)
    runs = [engine.probe(0) for _ in range(repeats)]
    return statistics.median(r.seconds for r in runs), runs[-1].hvp_count


_SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
_COPIES = ("cudaMemcpyAsync", "cudaMemcpy")
_LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")


def profile_contenders(contenders: dict[str, Callable[[], object]], steps: int, device: torch.device,
                       details: Path) -> list[str]:
    """One profiled repetition of each contender (they are warm): a per-step table; operator tables to ``details``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    device_key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    lines = ["", "Profiled (one repetition each, under torch.profiler, which slows the host side), per step:", "",
             "| contender | wall ms | device busy ms | kernel launches | synchronisations | host-device copies |",
             "|---|---|---|---|---|---|"]
    sections = []
    for name, run in contenders.items():
        with profile(activities=activities) as prof:
            started = time.perf_counter()
            run()
            wall = time.perf_counter() - started
        averages = prof.key_averages()
        count = {key: sum(e.count for e in averages if e.key in names)
                 for key, names in (("syncs", _SYNCS), ("copies", _COPIES), ("launches", _LAUNCHES))}
        busy = sum(getattr(e, "self_device_time_total", 0.0) for e in averages
                   if getattr(e, "device_type", None) is not None and str(e.device_type).endswith("CUDA")) / 1e3
        lines.append(f"| {name} | {1e3 * wall / steps:.2f} | {busy / steps:.2f} | {count['launches'] / steps:.0f} | "
                     f"{count['syncs'] / steps:.1f} | {count['copies'] / steps:.1f} |")
        sections.append(f"## {name}: by self CPU time\n\n"
                        f"{averages.table(sort_by='self_cpu_time_total', row_limit=25)}\n\n"
                        f"## {name}: by self device time\n\n{averages.table(sort_by=device_key, row_limit=25)}\n")
    if device.type == "cuda":
        lines += ["", "Synchronising calls per step, by the innermost absa or benchmark line that made them "
                  "(torch.cuda.set_sync_debug_mode):", ""]
        for name, run in contenders.items():
            sources = sync_sources(run)
            lines.append(f"- {name}: " + (", ".join(f"{where} ×{count / steps:.2f}"
                                                    for where, count in sources.most_common(6)) or "none"))
    details.parent.mkdir(parents=True, exist_ok=True)
    details.write_text("\n".join(sections))
    return lines + ["", f"Operator tables: {details}"]


def sync_sources(run: Callable[[], object]) -> Counter[str]:
    """Where one repetition synchronises the host with the GPU: the count of CUDA's synchronisation warnings by the
    innermost frame of absa_cli/ or benchmarks/ on the stack when each was raised."""
    ours = ("absa_cli", "benchmarks")
    sources: Counter[str] = Counter()

    def record(message, category, filename, lineno, file=None, line=None) -> None:
        if "synchroniz" not in str(message):  # other warnings (deprecations, autocast) are not syncs
            return
        frames = [f for f in traceback.extract_stack()[:-1] if set(ours) & set(Path(f.filename).parent.parts)]
        where = frames[-1] if frames else None
        sources[f"{Path(where.filename).name}:{where.lineno}" if where else f"{Path(filename).name}:{lineno}"] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sources


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), platform.processor())
        where = f"{cpu}, {os.cpu_count()} cores"
    load = f", load {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    return f"{where}, PyTorch {torch.__version__}, Python {platform.python_version()}{load}, {time.strftime('%Y-%m-%d')}"


def throughput_tables(args: argparse.Namespace) -> str:
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    num_train = args.batch * args.steps  # one repetition = one epoch
    config = build_config(args, num_train)
    engine = Engine(config, device=device, datasets=build_data(args, num_train))
    geometry = BatchGeometry(args.batch, 1, args.batch, 1)
    lrs = [config.optim.lr] * args.steps
    epochs = iter(range(10**9))
    contenders: dict[str, Callable[[], object]] = {
        "plain": plain_loop(config, engine, args.steps),
        "engine": lambda: engine.train_chunk(next(epochs), 0, lrs, geometry),
    }
    if args.synced_plain:
        contenders["plain, synced"] = plain_loop(config, engine, args.steps, synced=True)
    group = None
    if args.ray:
        contenders["ray"], group = ray_contender(config, geometry, lrs)
    try:
        seconds = interleaved(contenders, args.repeats)
        profiled = profile_contenders(contenders, args.steps, device, args.profile) if args.profile else []
    finally:
        if group is not None:
            group.close()
    rates = {name: num_train / statistics.median(values) for name, values in seconds.items()}
    lines = [f"{args.model} (width {args.width}), {args.image_size} px, {args.data} data, batch {args.batch}, "
             f"{args.steps} steps × {args.repeats} repeats; {engine.accel.describe()}; "
             f"data on device: {engine.data_on_device}; {machine(device)}", "",
             "| contender | samples/s (median) | min–max | ÷ plain |", "|---|---|---|---|"]
    for name, values in seconds.items():
        low, high = num_train / max(values), num_train / min(values)
        lines.append(f"| {name} | {rates[name]:,.0f} | {low:,.0f}–{high:,.0f} | {rates[name] / rates['plain']:.2f}× |")
    lines += profiled
    if args.probe:
        probe_s, hvps = time_probe(engine, args.probe_repeats)
        step_s = args.batch / rates["engine"]
        epoch_s = args.epoch_samples / rates["engine"]
        lines += ["", f"Probe: Lanczos, batch {args.probe_batch}, at most {args.probe_iters} HVPs, fp32 unless "
                  f"probe.amp; median of {args.probe_repeats}.", "",
                  f"| probe s | HVPs | s per HVP | ÷ one training step | ÷ one epoch of {args.epoch_samples:,} |",
                  "|---|---|---|---|---|",
                  f"| {probe_s:.3f} | {hvps} | {probe_s / max(hvps, 1):.4f} | {probe_s / step_s:.1f}× | "
                  f"{probe_s / epoch_s:.2%} |"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ a finished run

def probe_share(run_dir: Path) -> dict[str, float]:
    """Σ probe_s / Σ epoch_s over the epoch records of a run's metrics.jsonl (epoch_s includes the probe)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    if not epochs:
        raise SystemExit(f"{run_dir / 'metrics.jsonl'} has no epoch records")
    probe_s = sum(r.get("probe_s") or 0.0 for r in epochs)
    epoch_s = sum(r.get("epoch_s") or 0.0 for r in epochs)
    probes = sum(1 + len(r.get("eigenvalue_rechecks") or []) for r in epochs if r.get("probe_hvps"))  # rechecks too
    return {"epochs": len(epochs), "probes": probes,
            "hvps": sum(r.get("probe_hvps") or 0 for r in epochs), "probe_s": probe_s, "epoch_s": epoch_s,
            "share": probe_s / epoch_s if epoch_s else 0.0}


def probe_share_table(run_dir: Path) -> str:
    share = probe_share(run_dir)
    return "\n".join([f"Run {run_dir}", "", "| epochs | probes | HVPs | Σ probe_s | Σ epoch_s | probe share |",
                      "|---|---|---|---|---|---|",
                      f"| {share['epochs']} | {share['probes']} | {share['hvps']} | {share['probe_s']:.2f} | "
                      f"{share['epoch_s']:.2f} | {share['share']:.2%} |"])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    text = probe_share_table(args.run_dir) if args.run_dir else throughput_tables(args)
    if args.title:
        text = f"## {args.title}\n\n{text}"
    print(text, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as out:
            out.write(text + "\n\n")


if __name__ == "__main__":
    main()
