"""How much of the probe's λ_max is the probe set and how much is the training: a finished run's epoch checkpoints,
each probed on several probe sets.

The ABSA rule grows the batch when λ_max has halved since the last growth, reading λ_max on one fixed batch of
``probe.batch_size`` training samples. If λ_max read on another batch of the same size differs by a large fraction,
the rule is reading the probe set as much as the curvature. For each checkpoint of ``--run-dir`` (every epoch's,
in order) this script computes λ_max converged (Lanczos, relative residual ``--tol``), BatchNorm in the run's
``probe.bn_mode``, on:

- ``--seeds`` probe sets of ``probe.batch_size`` samples (seeds 0, 1, ...; seed 0 is the run's own when
  ``probe.seed`` is 0): their mean, standard deviation and coefficient of variation;
- one larger set of ``--large-batches`` × ``probe.batch_size`` samples (seed 0), the closer estimate of the
  training loss's λ_max;
- the curvature of the larger set along the top eigenvector of the seed-0 set, vᵀH_large v (``v_on_large``): how
  much of the small set's top direction is a direction of the training loss at all, and how much is particular to
  its 128 samples (λ_max of the small set is vᵀH_small v; a top direction fitted to a few samples reads lower on
  others).

Keep every epoch's checkpoint when training the run, e.g.:

    .venv/bin/absa train quickstart --local checkpoint.keep_last=12
    .venv/bin/python benchmarks/probe_noise.py --run-dir runs/<run-id> --out probe_noise.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import torch.nn.functional as F  # noqa: E402

from absa_cli.run import checkpoint  # noqa: E402
from absa_cli.curvature import HessianOperator, lanczos  # noqa: E402
from absa_cli.worker.hessian import HessianOptions, analyse, probe_batches, rebuild_model  # noqa: E402
from absa_cli.run.rundir import RunDir  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", type=Path, required=True, help="a run directory whose checkpoints/ keeps each epoch")
    p.add_argument("--seeds", type=int, default=5, help="probe sets of probe.batch_size samples per checkpoint")
    p.add_argument("--large-batches", type=int, default=8, help="batches in the larger probe set (0: none)")
    p.add_argument("--tol", type=float, default=1e-4, help="Lanczos tolerance (relative residual)")
    p.add_argument("--max-iter", type=int, default=60, help="Lanczos steps at most")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave PyTorch's default)")
    p.add_argument("--out", type=Path, help="write the rows as JSON here")
    return p.parse_args(argv)


def measure(run_dir: Path, seeds: int, large_batches: int, tol: float, max_iter: int) -> list[dict]:
    run = RunDir(run_dir)
    config = run.load_config()
    probe = config.probe
    entries = checkpoint.CheckpointStore(run.checkpoints_dir).epoch_entries()
    if not entries:
        raise SystemExit(f"{run_dir} has no epoch checkpoint")
    base = HessianOptions(method="lanczos", max_iter=max_iter, tol=tol, batch_size=probe.batch_size,
                          num_batches=1, bn_mode=probe.bn_mode)
    sets = {f"seed{s}": probe_batches(config, dataclasses.replace(base, seed=s)) for s in range(seeds)}
    if large_batches:
        sets["large"] = probe_batches(config, dataclasses.replace(base, num_batches=large_batches))
    rows = []
    for entry in entries:
        model = rebuild_model(config, checkpoint.load(run.checkpoints_dir / entry.file))
        values = {name: analyse(model, batches, base)["top_eigenvalues"][0] for name, batches in sets.items()}
        small = [values[f"seed{s}"] for s in range(seeds)]
        mean = statistics.fmean(small)
        std = statistics.stdev(small) if len(small) > 1 else 0.0
        rows.append({"epoch": entry.epoch, "values": values, "mean": mean, "std": std, "cv": std / abs(mean),
                     "large": values.get("large"),
                     "v_on_large": direction_on(model, sets["seed0"], sets["large"], base) if large_batches else None})
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items()
                          if k != "values"}), flush=True)
    return rows


def direction_on(model: torch.nn.Module, small: list, large: list, options: HessianOptions) -> float:
    """vᵀH_large v for v the (unit) top eigenvector of the Hessian on ``small``."""
    operator = HessianOperator(model, F.cross_entropy, small, bn_mode=options.bn_mode)
    v = lanczos(operator, k=1, max_iter=options.max_iter, tol=options.tol, return_eigenvectors=True).eigenvectors[0]
    operator.release()
    v = v / v.norm()
    operator = HessianOperator(model, F.cross_entropy, large, bn_mode=options.bn_mode)
    curvature = float(v @ operator.matvec(v))
    operator.release()
    return curvature


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = measure(args.run_dir, args.seeds, args.large_batches, args.tol, args.max_iter)
    print(f"\nmachine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); {len(rows)} checkpoints of {args.run_dir}")
    large = f" | λ_max on {args.large_batches} batches | seed 0's top direction on them" if args.large_batches else ""
    print(f"| epoch | λ_max, seed 0 | mean ± std over {args.seeds} probe sets | CV{large} |")
    print("|---|---|---|---|" + ("---|---|" if args.large_batches else ""))
    for r in rows:
        tail = f" | {r['large']:.2f} | {r['v_on_large']:.2f}" if r["large"] is not None else ""
        print(f"| {r['epoch']} | {r['values']['seed0']:.2f} | {r['mean']:.2f} ± {r['std']:.2f} | "
              f"{100 * r['cv']:.0f}%{tail} |")
    if args.out:
        args.out.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
