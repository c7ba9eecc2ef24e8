"""`absa train resnet18-imagenet --max-gpus 64` projected: absa vs fixed vs fixed-large, from a step-time profile
built from named numbers (no GPU here).

Every coefficient of the profile (decide/throughput.py) comes from a figure below, each with its source; where no
measured figure exists, the number is an assumption and says so. The profile is written to
``benchmarks/profiles/resnet18-imagenet-h100.json`` and used exactly as ``absa plan --profile`` uses one:

    .venv/bin/python benchmarks/h100_projection.py [--json results.json]
    .venv/bin/absa plan resnet18-imagenet --max-gpus 64 --profile benchmarks/profiles/resnet18-imagenet-h100.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PROFILE = Path(__file__).resolve().parent / "profiles" / "resnet18-imagenet-h100.json"

# ---- the figures, with their sources ----------------------------------------------------------------------------
ANCHORS = "../shared/ANCHORS.md (one NVIDIA H100 80GB HBM3, PyTorch 2.11, plain PyTorch, synthetic data)"
TRAIN_IMAGES_PER_S = 11_692  # ResNet-18, 224 px, batch 256, bf16 autocast + channels_last [ANCHORS]
HVP_FP32_MS = {32: 57.0, 128: 148.0, 256: 287.0}  # one HVP, ResNet-18 224 px, fp32 [ANCHORS]
HVP_BF16_MS_128 = 104.0  # one HVP at batch 128, bf16 [ANCHORS]
HVP_PER_GRADIENT = 3.9  # one HVP / one gradient, ResNet-18 b128 [ANCHORS]
NVLINK_BUSBW = 460e9  # 8×H100 SXM5, NCCL all_reduce busbw at large sizes, 460–480 GB/s: the low end
# [docs.alayanew.com/en/docs/tech-blog/2026-05-06-nccl-tests, "Reference numbers"]
NIC_LINE_RATE = 400e9 / 8  # one 400 Gb/s ConnectX-7 (NDR) per GPU [imbue's 4,088-H100 cluster, via magicalbits.net]
NIC_EFFICIENCY = 0.9  # ASSUMPTION: NCCL reaches ~90% of the line rate across nodes at large messages
HOP_LATENCY_S = 5e-6  # ASSUMPTION: a few µs per ring hop (NCCL's LL/Simple protocols across NVLink and IB)
GPUS_PER_NODE = 8  # HGX/DGX H100
OPTIMIZER_S = 0.3e-3  # ASSUMPTION: SGD momentum on 11.7M parameters: ~5 passes over 47 MB at ~3 TB/s HBM3 plus launches
STEP_OTHER_S = 1e-3  # ASSUMPTION: absa's per-step Python and bookkeeping (measured on CPU: 1–2 ms, docs/benchmarks.md)
EVAL_PER_TRAIN = 1 / 3  # ASSUMPTION: a forward pass costs a third of forward + backward
EPOCH_OTHER_S = 1.0  # ASSUMPTION: a checkpoint (~140 MB with momentum) and the driver's calls per epoch
START_S = 30.0  # ASSUMPTION: the first workers' start (torch import, ImageNet index, model) before step 1
PAPER_S = {"fixed": 125_000, "absa": 14_200}  # PAPER.md: 125K s → 14.2K s (8.78×), the paper's own hardware


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args()


def gradient_bytes() -> int:
    from absa_cli.models import build_model

    model = build_model("resnet18", 1000, 224)
    return 4 * sum(p.numel() for p in model.parameters())


def profile():
    """The H100 profile: compute line from the training throughput and the HVP's fixed cost, ring all-reduce from
    NVLink inside a node and the NIC across nodes."""
    from absa_cli.decide.throughput import StepModel

    # fixed cost of a forward+backward: the HVP line's intercept (fp32, 32 → 256) over the HVP/gradient ratio
    slope = (HVP_FP32_MS[256] - HVP_FP32_MS[32]) / (256 - 32)
    fixed_s = (HVP_FP32_MS[32] - slope * 32) / HVP_PER_GRADIENT / 1000
    per_sample_s = (256 / TRAIN_IMAGES_PER_S - fixed_s) / 256  # so that batch 256 runs at the measured rate
    return StepModel(
        model="resnet18 (width 1) on imagenet", device="NVIDIA H100 80GB HBM3 (projected)",
        gradient_bytes=gradient_bytes(), compute_s=(fixed_s, per_sample_s), data_s=(0.0, 0.0),
        allreduce_latency_s=HOP_LATENCY_S, allreduce_bandwidth=NVLINK_BUSBW, node_workers=GPUS_PER_NODE,
        allreduce_bandwidth_inter=NIC_LINE_RATE * NIC_EFFICIENCY, optimizer_s=OPTIMIZER_S, other_s=STEP_OTHER_S,
        eval_s_per_sample=EVAL_PER_TRAIN / TRAIN_IMAGES_PER_S, probe_s=10 * HVP_BF16_MS_128 / 1000,
        epoch_s=EPOCH_OTHER_S, start_s=START_S,
        sources=(f"compute: {TRAIN_IMAGES_PER_S:,} img/s at batch 256 bf16 and the fp32 HVP line over "
                 f"HVP/gradient {HVP_PER_GRADIENT} [{ANCHORS}]",
                 "probe: 10 HVPs at batch 128 bf16, 104 ms each [ANCHORS]",
                 "all-reduce: NVLink busbw 460 GB/s [docs.alayanew.com nccl-tests reference numbers]; 400 Gb/s "
                 "ConnectX-7 per GPU across nodes at 90% [imbue via magicalbits.net; 90% assumed]",
                 "data wait 0 (a loader that keeps up: assumed); optimizer, per-step rest, evaluation, per-epoch "
                 "rest and start: assumptions in benchmarks/h100_projection.py"))


def main() -> None:
    args = parse_args()
    from absa_cli import config as config_mod
    from absa_cli.cli.plan import build_plan
    from absa_cli.run import profile as profiles

    model = profile()
    PROFILE.parent.mkdir(parents=True, exist_ok=True)
    profiles.save(model, PROFILE)
    config = config_mod.load("resnet18-imagenet", [f"cluster.profile={PROFILE}"])  # the run steered by it
    config.cluster.max_workers = 64
    plan = build_plan(config, 64, model)
    cases = plan["time"]["cases"]
    fixed = cases["fixed"]["seconds"]
    print(f"profile: {PROFILE.relative_to(Path.cwd()) if PROFILE.is_relative_to(Path.cwd()) else PROFILE}")
    print("| run (64 × H100 allowed) | updates | wall time | × faster than fixed | GPU-hours used | held idle |")
    print("|---|---|---|---|---|---|")
    updates = {**plan["updates"], "fixed": plan["fixed_updates"],
               "fixed-large": plan["epochs"] * (plan["num_train_samples"] // config.policy.max_global_batch)}
    for name, case in cases.items():
        print(f"| {name} | {updates[name]:,} | {case['seconds']:,.0f} s | {fixed / case['seconds']:.2f}× | "
              f"{case['worker_hours']:.1f} | {case['idle_worker_hours']:.1f} |")
    print(f"| paper: fixed → ABSA | — | {PAPER_S['fixed']:,} s → {PAPER_S['absa']:,} s | "
          f"{PAPER_S['fixed'] / PAPER_S['absa']:.2f}× | — | — |")
    for name in ("fastest", "fixed"):
        print(f"{name}: " + "; ".join(f"epochs {p['first_epoch']}–{p['last_epoch']}: {p['global_batch_size']:,} on "
                                      f"{p['num_workers']} ({p['step_s'] * 1000:.1f} ms a step)"
                                      for p in cases[name]["phases"]))
    if args.json:
        args.json.write_text(json.dumps({"plan": plan, "paper_s": PAPER_S}, indent=2, default=str))


if __name__ == "__main__":
    main()
