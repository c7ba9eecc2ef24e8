"""What a warm start saves the curvature probe, measured on a finished run's epoch checkpoints.

The probe runs once per epoch on the same fixed probe set while the weights move a little, so the top eigenvector
of one epoch is a good first vector for the next ("warm start"); a Gaussian start ("cold", the paper's) knows
nothing. For each checkpoint of ``--run-dir`` in epoch order this script measures, with the run's own probe set
(``probe.batch_size`` × ``probe.num_batches`` from ``probe.seed``, BatchNorm in ``probe.bn_mode``):

- the **reference** λ_max: Lanczos to a residual of ``--ref-tol`` (1e-6) relative, from the cold start;
- for power iteration and Lanczos each, at the run's ``probe.max_iter`` and ``probe.tol``: a **cold** probe and a
  **warm** probe started from the previous checkpoint's warm eigenvector (the first checkpoint starts cold), with
  the HVPs each spent and its relative error against the reference;
- the cosine between consecutive reference eigenvectors (how far the top direction turned in an epoch).

Keep every epoch's checkpoint when training the run, e.g.:

    .venv/bin/absa train quickstart --local checkpoint.keep_last=12
    .venv/bin/python benchmarks/probe_warm.py --run-dir runs/<run-id> --out probe_warm.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from absa_cli.run import checkpoint  # noqa: E402
from absa_cli.curvature import HessianOperator, lanczos, power_iteration  # noqa: E402
from absa_cli.curvature.vectors import dot  # noqa: E402
from absa_cli.worker.hessian import HessianOptions, probe_batches, rebuild_model  # noqa: E402
from absa_cli.run.rundir import RunDir  # noqa: E402

METHODS = ("power", "lanczos")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", type=Path, required=True, help="a run directory whose checkpoints/ keeps each epoch")
    p.add_argument("--ref-tol", type=float, default=1e-6, help="reference Lanczos tolerance (relative residual)")
    p.add_argument("--ref-iters", type=int, default=80, help="reference Lanczos steps at most")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave PyTorch's default)")
    p.add_argument("--out", type=Path, help="write the rows and the summary as JSON here")
    return p.parse_args(argv)


def solve(method: str, operator: HessianOperator, probe, start: torch.Tensor | None):
    if method == "power":
        return power_iteration(operator, max_iter=probe.max_iter, tol=probe.tol, seed=probe.seed, start=start)
    return lanczos(operator, k=1, max_iter=probe.max_iter, tol=probe.tol, seed=probe.seed,
                   return_eigenvectors=True, start=start)


def measure(run_dir: Path, ref_tol: float, ref_iters: int) -> list[dict]:
    run = RunDir(run_dir)
    config = run.load_config()
    probe = config.probe
    entries = checkpoint.CheckpointStore(run.checkpoints_dir).epoch_entries()
    if len(entries) < 2:
        raise SystemExit(f"{run_dir} keeps {len(entries)} epoch checkpoint(s); train with checkpoint.keep_last "
                         f"at least the number of epochs")
    options = HessianOptions(batch_size=probe.batch_size, num_batches=probe.num_batches, bn_mode=probe.bn_mode,
                             seed=probe.seed)
    batches = probe_batches(config, options)
    warm: dict[str, torch.Tensor | None] = {m: None for m in METHODS}
    previous_ref: torch.Tensor | None = None
    rows = []
    for entry in entries:
        model = rebuild_model(config, checkpoint.load(run.checkpoints_dir / entry.file))
        operator = HessianOperator(model, F.cross_entropy, batches, bn_mode=probe.bn_mode)
        reference = lanczos(operator, k=1, max_iter=ref_iters, tol=ref_tol, seed=probe.seed,
                            return_eigenvectors=True)
        ref_value, ref_vector = reference.eigenvalues[0], reference.eigenvectors[0]
        row = {"epoch": entry.epoch, "lambda_ref": ref_value, "ref_hvps": reference.hvp_count,
               "ref_converged": reference.converged,
               "cos_prev": None if previous_ref is None else abs(dot(previous_ref, ref_vector))}
        for method in METHODS:
            for kind, start in (("cold", None), ("warm", warm[method])):
                started = time.perf_counter()
                result = solve(method, operator, probe, start)
                row[f"{method}_{kind}_s"] = time.perf_counter() - started
                row[f"{method}_{kind}_hvps"] = result.hvp_count
                row[f"{method}_{kind}_err"] = abs(result.eigenvalues[0] - ref_value) / abs(ref_value)
                if kind == "warm":
                    warm[method] = result.eigenvectors[0]
        operator.release()
        previous_ref = ref_vector
        rows.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return rows


def summarise(rows: list[dict]) -> dict:
    later = rows[1:]  # the first checkpoint has nothing to start warm from
    summary = {"checkpoints": len(rows), "compared": len(later)}
    for method in METHODS:
        for kind in ("cold", "warm"):
            summary[f"{method}_{kind}_hvps"] = sum(r[f"{method}_{kind}_hvps"] for r in later)
            errors = [r[f"{method}_{kind}_err"] for r in later]
            summary[f"{method}_{kind}_err_median"] = statistics.median(errors)
            summary[f"{method}_{kind}_err_max"] = max(errors)
            summary[f"{method}_{kind}_s"] = sum(r[f"{method}_{kind}_s"] for r in later)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = measure(args.run_dir, args.ref_tol, args.ref_iters)
    summary = summarise(rows)
    print(f"\nmachine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); checkpoints 2..{len(rows)} of {args.run_dir}")
    print("| method | start | HVPs | seconds | median rel. error | max rel. error |")
    print("|---|---|---|---|---|---|")
    for method in METHODS:
        for kind in ("cold", "warm"):
            print(f"| {method} | {kind} | {summary[f'{method}_{kind}_hvps']} | {summary[f'{method}_{kind}_s']:.2f} | "
                  f"{summary[f'{method}_{kind}_err_median']:.2e} | {summary[f'{method}_{kind}_err_max']:.2e} |")
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "summary": summary}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
