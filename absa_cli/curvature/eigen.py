"""Top Hessian eigenvalues: power iteration (the paper's probe) and Lanczos (fewer products for the same accuracy).

Both take any ``SymmetricOperator`` (``HessianOperator`` is the one absa uses), draw
their start vector from a local generator seeded by ``seed`` (same seed → same result, on every rank), and report how
many Hessian-vector products they spent, because that is what a probe costs.

Power iteration converges at the rate ``(λ₂/λ₁)²`` per product, slow when the top of the spectrum is crowded, which is
the usual case for a network's Hessian. Lanczos builds the Krylov space of the same products and extracts the best
approximation inside it; with full re-orthogonalisation its Ritz values are trustworthy and it needs far fewer
products: on the tests' 203-parameter tanh MLP, over 5 seeds, 7–8 products reach λ_max to 1e-3 where power iteration
needs 11–20, and the paper's setting (10 products, tol 1e-2) leaves power iteration 0.6–7% off.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from absa_cli.curvature.hvp import SymmetricOperator
from absa_cli.curvature.vectors import dot, gaussian, generator, norm, normalise

TINY = 1e-30  # guards divisions by an eigenvalue that is exactly zero


@dataclass(frozen=True)
class EigenResult:
    """Eigenvalue estimates, largest first, and what they cost."""

    eigenvalues: list[float]
    hvp_count: int
    iterations: int
    converged: bool
    residuals: list[float] | None = None  # Lanczos: ‖H·y − θ·y‖ of each Ritz pair (a bound on |λ − θ|)
    eigenvectors: list[torch.Tensor] | None = None  # flat, unit length, same order as eigenvalues
    history: list[float] | None = None  # the top estimate after each product: how fast it settled


def power_iteration(op: SymmetricOperator, max_iter: int = 10, tol: float = 1e-2, seed: int = 0,
                    start: torch.Tensor | None = None) -> EigenResult:
    """The eigenvalue of largest magnitude, as the paper's probe computes it.

    Each product gives the Rayleigh quotient ``λ = vᵀHv`` of the current unit vector ``v``; iteration stops when
    ``|λ − λ_prev| < tol·|λ_prev|`` or after ``max_iter`` products. Defaults are the paper's (10, 1e-2).
    ``start``: the first vector (e.g. the previous probe's eigenvector, a warm start); default a Gaussian from ``seed``.
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be ≥ 1, got {max_iter}")
    start_count = op.hvp_count
    v = normalise(start_vector(op, seed, start))
    eigenvalue, converged, iterations, history = 0.0, False, 0, []
    for iterations in range(1, max_iter + 1):
        hv = op.matvec(v)
        estimate = dot(hv, v)
        history.append(estimate)
        length = norm(hv)
        previous, eigenvalue = eigenvalue, estimate
        if length == 0.0:  # v is in the null space: H·v = 0 exactly
            converged = True
            break
        v = hv / length
        if iterations > 1 and abs(estimate - previous) < tol * max(abs(previous), TINY):
            converged = True
            break
    return EigenResult(eigenvalues=[eigenvalue], hvp_count=op.hvp_count - start_count, iterations=iterations,
                       converged=converged, eigenvectors=[v], history=history)


def start_vector(op: SymmetricOperator, seed: int, start: torch.Tensor | None) -> torch.Tensor:
    """``start`` checked against the operator, or a Gaussian drawn from ``seed``."""
    if start is None:
        return gaussian(op.dim, generator(seed), dtype=op.dtype, device=op.device)
    if start.shape != (op.dim,):
        raise ValueError(f"the start vector has shape {tuple(start.shape)}; the operator needs ({op.dim},)")
    return start.to(dtype=op.dtype, device=op.device)


@dataclass
class Krylov:
    """What ``lanczos_tridiagonal`` built: the orthonormal basis and the tridiagonal ``T = QᵀHQ``."""

    basis: torch.Tensor  # rows 0..steps-1 are q_0..q_{m-1}
    alphas: list[float]  # diagonal of T
    betas: list[float]  # betas[j] = ‖r_j‖; T's off-diagonal is betas[:-1], betas[-1] drives the residuals
    exhausted: bool  # the Krylov space is invariant under H (or is the whole space): Ritz values are exact
    finite: bool = True  # False: a product was NaN or infinite (T has no eigenvalues to speak of); stopped there

    @property
    def steps(self) -> int:
        return len(self.alphas)

    def tridiagonal(self) -> torch.Tensor:
        """``T`` in float64."""
        diag = torch.tensor(self.alphas, dtype=torch.float64)
        off = torch.tensor(self.betas[:-1], dtype=torch.float64)
        return torch.diag(diag) + torch.diag(off, 1) + torch.diag(off, -1)


def lanczos_tridiagonal(op: SymmetricOperator, start: torch.Tensor, max_steps: int,
                        stop: Callable[[Krylov], bool] | None = None) -> Krylov:
    """Up to ``max_steps`` Lanczos steps from ``start`` with full re-orthogonalisation.

    Why full: in floating point plain Lanczos loses orthogonality as soon as a Ritz value converges, and then produces
    spurious copies ("ghosts") of converged eigenvalues — fatal for top-k and for a spectral density. Projecting every
    new vector against the whole stored basis, twice (classical Gram–Schmidt twice is enough in practice), keeps the
    basis orthonormal to working precision. The projection subsumes the three-term recurrence. Memory: the basis,
    ``max_steps × dim`` values in the parameters' dtype. ``stop(krylov)`` is asked after every step.
    """
    max_steps = min(max_steps, op.dim)
    basis = torch.empty(max_steps, op.dim, dtype=op.dtype, device=op.device)
    basis[0] = normalise(start.to(dtype=op.dtype, device=op.device))
    krylov = Krylov(basis=basis, alphas=[], betas=[], exhausted=False)
    eps = torch.finfo(op.dtype).eps
    for j in range(max_steps):
        w = op.matvec(basis[j])
        krylov.alphas.append(dot(w, basis[j]))
        span = basis[: j + 1]
        for _ in range(2):
            w -= span.T @ (span @ w)
        beta = norm(w)
        krylov.betas.append(beta)
        if not math.isfinite(krylov.alphas[-1]) or not math.isfinite(beta):
            krylov.finite = False
            break
        scale = max(max(abs(a) for a in krylov.alphas), max(krylov.betas))
        if beta <= 10 * eps * scale or j + 1 == op.dim:
            krylov.exhausted = True
        satisfied = stop is not None and stop(krylov)  # asked every step, also the last
        if krylov.exhausted or satisfied or j + 1 == max_steps:
            break
        basis[j + 1] = w / beta
    return krylov


def ritz_pairs(krylov: Krylov) -> tuple[torch.Tensor, torch.Tensor]:
    """Ritz values (ascending, float64) and the eigenvectors of ``T`` (columns)."""
    return torch.linalg.eigh(krylov.tridiagonal())


def lanczos(op: SymmetricOperator, k: int = 1, max_iter: int = 30, tol: float = 1e-3, seed: int = 0,
            return_eigenvectors: bool = False, start: torch.Tensor | None = None) -> EigenResult:
    """The ``k`` algebraically largest eigenvalues, largest first.

    Stops when every one of the top-``k`` Ritz pairs has residual ``|β_m · s_{m,i}| ≤ tol·|θ_i|``; the residual bounds
    ``|λ − θ|`` and the true error is usually far smaller (about residual²/gap). Note the difference from power
    iteration: "largest" is algebraic here, so a large negative eigenvalue is not reported as the top one.
    ``start`` as for ``power_iteration``.
    """
    if k < 1 or k > op.dim:
        raise ValueError(f"k must be between 1 and the dimension {op.dim}, got {k}")
    if max_iter < k:
        raise ValueError(f"max_iter ({max_iter}) must be at least k ({k})")
    start_count = op.hvp_count

    def top_k(krylov: Krylov) -> tuple[list[float], list[float], torch.Tensor]:
        values, vectors = ritz_pairs(krylov)
        order = torch.argsort(values, descending=True)[:k]
        residuals = (krylov.betas[-1] * vectors[-1, order].abs()).tolist()
        return values[order].tolist(), residuals, vectors[:, order]

    history: list[float] = []

    def small_enough(krylov: Krylov) -> bool:
        values, residuals, _ = top_k(krylov)
        history.append(values[0])
        return krylov.steps >= k and all(r <= tol * abs(v) for v, r in zip(values, residuals))

    krylov = lanczos_tridiagonal(op, start_vector(op, seed, start), max_iter, stop=small_enough)
    if not krylov.finite:  # NaN, as power iteration gives (a probe's NaN is ignored: decide/policy.py)
        nan = [math.nan] * k
        return EigenResult(eigenvalues=nan, hvp_count=op.hvp_count - start_count, iterations=krylov.steps,
                           converged=False, residuals=nan, history=[*history, math.nan],
                           eigenvectors=[torch.full((op.dim,), math.nan, dtype=op.dtype, device=op.device)] * k
                           if return_eigenvectors else None)
    values, residuals, vectors = top_k(krylov)
    converged = krylov.exhausted or all(r <= tol * abs(v) for v, r in zip(values, residuals))
    eigenvectors = None
    if return_eigenvectors:
        coefficients = vectors.to(op.dtype).to(op.device)
        eigenvectors = list((krylov.basis[: krylov.steps].T @ coefficients).T)
    return EigenResult(eigenvalues=values, hvp_count=op.hvp_count - start_count, iterations=krylov.steps,
                       converged=converged, residuals=residuals, eigenvectors=eigenvectors,
                       history=history)

