"""Hessian eigenvalue density by stochastic Lanczos quadrature (SLQ).

For a unit vector ``v``, ``vᵀ f(H) v = Σ_i (vᵀu_i)² f(λ_i)`` is an integral of ``f`` against a spectral measure whose
expectation over random ``v`` is the uniform measure on the eigenvalues (the density). ``m`` Lanczos steps from ``v``
give a Gauss quadrature for that measure: nodes ``θ_j`` (eigenvalues of ``T``) and weights ``τ_j = s_{1j}²`` (squared
first components of ``T``'s eigenvectors), ``Σ_j τ_j = 1``. Averaging over several Gaussian start vectors and
smoothing each node with a Gaussian kernel of width ``sigma`` gives a density that integrates to 1.

Why Lanczos with full re-orthogonalisation: without it, converged outliers reappear as ghost nodes and steal weight.
Why Gaussian starts: their direction is uniform on the sphere, so ``E[(vᵀu_i)²] = 1/dim`` for every eigenvector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from absa_cli.curvature.eigen import lanczos_tridiagonal, ritz_pairs
from absa_cli.curvature.hvp import SymmetricOperator
from absa_cli.curvature.vectors import gaussian, generator

MAX_GRID_POINTS = 200_000  # a grid finer than this means sigma is absurdly small next to the spectrum's width


@dataclass(frozen=True)
class DensityResult:
    """Density on ``grid`` (float64), and the quadrature it came from: one (θ, τ) tensor pair per start vector."""

    grid: torch.Tensor
    density: torch.Tensor
    nodes: list[torch.Tensor]  # θ per run (float64, ascending)
    weights: list[torch.Tensor]  # τ per run (float64, sums to 1)
    sigma: float
    hvp_count: int


def spectral_density(op: SymmetricOperator, num_runs: int = 4, num_steps: int = 30, seed: int = 0,
                     sigma: float | None = None, num_points: int = 1000, pad_sigmas: float = 5.0) -> DensityResult:
    """SLQ density from ``num_runs`` start vectors × ``num_steps`` Lanczos steps (``num_runs·num_steps`` products).

    ``sigma`` is the kernel width in eigenvalue units; ``None`` means 1% of the node range (1.0 if that is zero). The
    grid spans ``[min θ − pad, max θ + pad]`` with ``pad = pad_sigmas·sigma``, so the kernels' tails beyond the grid
    hold less than 1e-6 of the mass with the default 5σ; it has at least ``num_points`` points and at least 4 per
    sigma so that the trapezoid rule integrates each kernel accurately.
    """
    if num_runs < 1 or num_steps < 1:
        raise ValueError(f"num_runs and num_steps must be ≥ 1, got {num_runs} and {num_steps}")
    if sigma is not None and sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    start_count = op.hvp_count
    gen = generator(seed)
    nodes, weights = [], []
    for _ in range(num_runs):
        start = gaussian(op.dim, gen, dtype=op.dtype, device=op.device)
        krylov = lanczos_tridiagonal(op, start, num_steps)
        if not krylov.finite:  # T holds NaN: no nodes to place (math.ceil of a NaN width raised further on)
            raise FloatingPointError("a Hessian-vector product was NaN or infinite: no density to estimate")
        values, vectors = ritz_pairs(krylov)
        nodes.append(values)
        weights.append(vectors[0] ** 2)
    theta, tau = torch.cat(nodes), torch.cat(weights) / num_runs
    low, high = float(theta.min()), float(theta.max())
    if sigma is None:
        sigma = 0.01 * (high - low) if high > low else 1.0
    pad = pad_sigmas * sigma
    count = max(num_points, math.ceil((high - low + 2 * pad) / (sigma / 4)) + 1)
    if count > MAX_GRID_POINTS:
        raise ValueError(f"sigma={sigma:g} is too small for a spectrum {high - low:g} wide "
                         f"({count} grid points needed; at most {MAX_GRID_POINTS})")
    grid = torch.linspace(low - pad, high + pad, count, dtype=torch.float64)
    density = gaussian_mixture(grid, theta, tau, sigma)
    return DensityResult(grid=grid, density=density, nodes=nodes, weights=weights, sigma=sigma,
                         hvp_count=op.hvp_count - start_count)


def gaussian_mixture(grid: torch.Tensor, centres: torch.Tensor, weights: torch.Tensor, sigma: float) -> torch.Tensor:
    """``Σ_j w_j · N(x; c_j, σ²)`` at every grid point, in chunks so memory stays bounded for long grids."""
    out = torch.empty_like(grid)
    norm = 1.0 / (sigma * math.sqrt(2 * math.pi))
    for chunk, target in zip(torch.split(grid, 4096), torch.split(out, 4096)):
        z = (chunk[:, None] - centres[None, :]) / sigma
        target.copy_(norm * (torch.exp(-0.5 * z * z) @ weights))
    return out
