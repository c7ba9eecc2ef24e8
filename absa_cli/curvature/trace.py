"""Hutchinson's estimate of the Hessian trace, in total and per parameter tensor.

For a Rademacher probe ``v`` (entries ±1), ``E[vᵀHv] = Σ_ij H_ij E[v_i v_j] = Σ_i H_ii = tr H``. The estimate is the
mean over probes; its standard error is the sample standard deviation over √n.

Per-block traces come from the same products, at no extra cost: split ``vᵀ(Hv) = Σ_b v_bᵀ(Hv)_b`` by parameter
tensor ``b``. Each term is unbiased for its block's trace, ``E[v_bᵀ(Hv)_b] = Σ_{i∈b} H_ii = tr H_bb``, and the terms
add up to the full-trace sample exactly, probe by probe. Probing each block alone (``v`` zero outside ``b``) would
have slightly lower variance — it drops the cross-block terms ``H_ij, i∈b, j∉b`` — but costs one product per block
per probe; a ResNet has dozens of blocks, so the shared probe is the better deal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from absa_cli.curvature.hvp import SymmetricOperator
from absa_cli.curvature.vectors import generator, rademacher


@dataclass(frozen=True)
class TraceResult:
    """``trace ± std_error`` from ``num_samples`` probes; ``block_*`` keyed by parameter name, in model order."""

    trace: float
    std_error: float  # nan with a single probe: one sample has no spread
    num_samples: int
    hvp_count: int
    converged: bool  # tol given and std_error ≤ tol·|trace| reached; False when tol is None
    samples: list[float]
    block_traces: dict[str, float]
    block_std_errors: dict[str, float]


def hutchinson_trace(op: SymmetricOperator, num_samples: int = 100, seed: int = 0, tol: float | None = None,
                     min_samples: int = 10) -> TraceResult:
    """Estimate ``tr H`` with up to ``num_samples`` Rademacher probes (one Hessian-vector product each).

    With ``tol``, stop as soon as at least ``min_samples`` probes give a standard error ≤ ``tol·|trace|``: a relative
    precision target, unlike a "relative change of the running mean" rule, which stops early on a lucky streak.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be ≥ 1, got {num_samples}")
    start_count = op.hvp_count
    gen = generator(seed)
    names = list(op.names)
    rows: list[torch.Tensor] = []  # per probe: float64 vector of per-block vᵀ(Hv) terms
    converged = False
    for _ in range(num_samples):
        v = rademacher(op.dim, gen, dtype=op.dtype, device=op.device)
        products = (v.to(torch.float64) * op.matvec(v).to(torch.float64))
        rows.append(torch.stack([block.sum() for block in torch.split(products, op.numels)]).cpu())
        if tol is not None and len(rows) >= max(min_samples, 2):
            trace, error = _mean_and_error(torch.stack(rows).sum(dim=1))
            if error <= tol * abs(trace):
                converged = True
                break
    table = torch.stack(rows)  # probes × blocks
    totals = table.sum(dim=1)
    trace, error = _mean_and_error(totals)
    block_stats = [_mean_and_error(table[:, i]) for i in range(table.shape[1])]
    return TraceResult(trace=trace, std_error=error, num_samples=len(rows), hvp_count=op.hvp_count - start_count,
                       converged=converged, samples=totals.tolist(),
                       block_traces={name: mean for name, (mean, _) in zip(names, block_stats)},
                       block_std_errors={name: err for name, (_, err) in zip(names, block_stats)})


def _mean_and_error(samples: torch.Tensor) -> tuple[float, float]:
    """Mean and standard error of the mean (``nan`` for one sample)."""
    n = samples.numel()
    mean = float(samples.mean())
    if n < 2:
        return mean, math.nan
    return mean, float(samples.std(correction=1)) / math.sqrt(n)
