"""Curvature engine against exact answers.

- Quadratic ``½xᵀAx + bᵀx`` with ``A = Q diag(λ) Qᵀ`` built from chosen eigenvalues (float64): ``H·v`` equals ``A·v``;
  power iteration and Lanczos recover the chosen top eigenvalues to 1e-6 relative. For the trace, a *diagonal*
  quadratic: a single Rademacher probe gives ``vᵀDv = Σ d_i v_i² = Σ d_i`` exactly, so Hutchinson is exact there.
- A tiny tanh MLP (float64, ~200 parameters) on a fixed batch, against its dense Hessian from
  ``torch.autograd.functional.hessian``: Lanczos top-3 eigenvalues, Hutchinson's trace and per-tensor traces (within
  a few standard errors of the exact diagonal sums), the SLQ density (integrates to 1, covers the spectrum), and
  Lanczos needing fewer products than power iteration for the same accuracy.
- BatchNorm modes on a tiny conv net: ``eval`` and ``train`` give different products, neither moves the running
  statistics, every module's training flag is restored, dropout never makes the operator random.
- Batch weighting: uneven batches give the Hessian of the mean loss over all their samples.
- Determinism: the same seed gives bit-identical results.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from absa_cli.curvature import (HessianOperator, hutchinson_trace, lanczos, power_iteration, spectral_density)

DTYPE = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _init(model: nn.Module, seed: int, scale: float = 0.7) -> nn.Module:
    """Deterministic weights without touching the global RNG."""
    gen = _generator(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
    return model


# ----------------------------------------------------------------------------------------------- quadratic

class Point(nn.Module):
    """A model whose output is its own parameter vector ``x``: the loss function supplies the quadratic."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.randn(dim, generator=_generator(1), dtype=DTYPE))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.x


TOP = [10.0, 6.0, 3.5]
EIGENVALUES = TOP + torch.linspace(-1.0, 1.0, 17, dtype=DTYPE).tolist()  # dim 20, distinct, top 3 well separated
DUMMY_BATCH = (torch.zeros(1), torch.zeros(1))


def quadratic_operator(matrix: torch.Tensor) -> HessianOperator:
    b = torch.randn(matrix.shape[0], generator=_generator(2), dtype=DTYPE)
    loss = lambda x, _targets: 0.5 * x @ matrix @ x + b @ x  # noqa: E731
    return HessianOperator(Point(matrix.shape[0]), loss, [DUMMY_BATCH])


@pytest.fixture(scope="module")
def quadratic_matrix() -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=_generator(0), dtype=DTYPE))
    return q @ torch.diag(torch.tensor(EIGENVALUES, dtype=DTYPE)) @ q.T


def test_hvp_of_a_quadratic_is_the_matrix_product(quadratic_matrix):
    op = quadratic_operator(quadratic_matrix)
    v = torch.randn(20, generator=_generator(3), dtype=DTYPE)
    torch.testing.assert_close(op.matvec(v), quadratic_matrix @ v, rtol=1e-12, atol=1e-12)
    assert op.hvp_count == 1 and op.dim == 20


def test_power_iteration_and_lanczos_find_the_exact_top_eigenvalues(quadratic_matrix):
    power = power_iteration(quadratic_operator(quadratic_matrix), max_iter=200, tol=1e-13)
    assert power.converged and power.eigenvalues[0] == pytest.approx(TOP[0], rel=1e-6)
    top3 = lanczos(quadratic_operator(quadratic_matrix), k=3, max_iter=20, tol=1e-10, return_eigenvectors=True)
    assert top3.converged
    assert top3.eigenvalues == pytest.approx(TOP, rel=1e-6)
    for value, vector in zip(top3.eigenvalues, top3.eigenvectors):  # Ritz vectors are eigenvectors too
        torch.testing.assert_close(quadratic_matrix @ vector, value * vector, rtol=0, atol=1e-6)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_operator_gives_nan_from_both_methods_not_an_exception(quadratic_matrix, bad):
    """A probe's NaN λ is ignored by the policy (docs/policy.md); Lanczos raised linalg.eigh's error instead."""
    matrix = quadratic_matrix.clone()
    matrix[3, 5] = matrix[5, 3] = bad
    power = power_iteration(quadratic_operator(matrix), max_iter=20)
    top = lanczos(quadratic_operator(matrix), k=2, max_iter=20, return_eigenvectors=True)
    assert math.isnan(power.eigenvalues[0])
    assert all(math.isnan(v) for v in top.eigenvalues) and len(top.eigenvalues) == 2 and not top.converged
    assert top.hvp_count == top.iterations == 1 and bool(torch.isnan(top.eigenvectors[1]).all())


def test_a_density_of_a_non_finite_operator_says_so(quadratic_matrix):
    matrix = quadratic_matrix.clone()
    matrix[3, 5] = matrix[5, 3] = math.nan
    with pytest.raises(FloatingPointError, match="a Hessian-vector product was NaN or infinite"):
        spectral_density(quadratic_operator(matrix), num_runs=1, num_steps=8)


def test_one_rademacher_probe_gives_the_exact_trace_of_a_diagonal_hessian():
    diagonal = torch.tensor(EIGENVALUES, dtype=DTYPE)
    result = hutchinson_trace(quadratic_operator(torch.diag(diagonal)), num_samples=1)
    assert result.trace == pytest.approx(float(diagonal.sum()), rel=1e-6, abs=1e-12)
    assert result.hvp_count == 1 and math.isnan(result.std_error)


# ------------------------------------------------------------------------------------------------- tiny MLP

def make_mlp() -> nn.Module:
    return _init(nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 3)).to(DTYPE), 0)


@pytest.fixture(scope="module")
def mlp_problem():
    model = make_mlp()
    gen = _generator(4)
    inputs = torch.randn(32, 5, generator=gen, dtype=DTYPE)
    targets = torch.randint(0, 3, (32,), generator=gen)
    return model, inputs, targets, dense_hessian(model, inputs, targets)


def dense_hessian(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The reference: the full Hessian of the mean loss over the flattened parameters."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(vector: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(vector, [s.numel() for s in shapes])
        params = {n: piece.view(s) for n, piece, s in zip(names, pieces, shapes)}
        return F.cross_entropy(functional_call(model, params, (inputs,)), targets)

    return torch.autograd.functional.hessian(loss, flat, vectorize=True)  # vmap: one batched pass, not 203 loops


def mlp_operator(problem, **kwargs) -> HessianOperator:
    model, inputs, targets, _ = problem
    return HessianOperator(model, F.cross_entropy, [(inputs, targets)], **kwargs)


def test_mlp_hvp_matches_the_dense_hessian(mlp_problem):
    op, hessian = mlp_operator(mlp_problem), mlp_problem[3]
    v = torch.randn(op.dim, generator=_generator(5), dtype=DTYPE)
    torch.testing.assert_close(op.matvec(v), hessian @ v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.matvec(v), hessian @ v, rtol=1e-10, atol=1e-12)  # second use of the kept graph


def test_lanczos_top3_matches_the_dense_spectrum(mlp_problem):
    exact = torch.linalg.eigvalsh(mlp_problem[3]).flip(0)[:3].tolist()
    result = lanczos(mlp_operator(mlp_problem), k=3, max_iter=80, tol=1e-6)
    assert result.converged
    assert result.eigenvalues == pytest.approx(exact, rel=1e-4)


def test_lanczos_needs_fewer_products_than_power_iteration(mlp_problem):
    """Products until λ_max is within 1e-3 (relative), read off each method's history of estimates."""
    exact = float(torch.linalg.eigvalsh(mlp_problem[3]).abs().max())

    def products_needed(history: list[float]) -> int:
        return next(n for n, value in enumerate(history, 1) if abs(value - exact) <= 1e-3 * exact)

    fast = lanczos(mlp_operator(mlp_problem), k=1, max_iter=80, tol=1e-3)
    slow = power_iteration(mlp_operator(mlp_problem), max_iter=300, tol=0.0)
    assert fast.hvp_count == len(fast.history) and slow.hvp_count == len(slow.history) == 300
    assert fast.eigenvalues[0] == pytest.approx(exact, rel=1e-3)
    assert products_needed(fast.history) < products_needed(slow.history)  # seed 0: 8 vs 18


def test_power_iteration_with_the_papers_settings_stops_within_ten_products(mlp_problem):
    op = mlp_operator(mlp_problem)
    op.matvec(torch.ones(op.dim, dtype=DTYPE))  # products before the call are not charged to it
    result = power_iteration(op, max_iter=10, tol=1e-2)
    assert 1 <= result.hvp_count <= 10
    assert result.hvp_count == result.iterations == op.hvp_count - 1


def test_hutchinson_trace_and_block_traces_agree_with_the_dense_diagonal(mlp_problem):
    model, hessian = mlp_problem[0], mlp_problem[3]
    result = hutchinson_trace(mlp_operator(mlp_problem), num_samples=200, seed=0)
    exact = float(torch.diagonal(hessian).sum())
    assert abs(result.trace - exact) <= 3 * result.std_error
    assert sum(result.block_traces.values()) == pytest.approx(result.trace, rel=1e-10, abs=1e-12)
    diagonal = torch.split(torch.diagonal(hessian), [p.numel() for p in model.parameters()])
    assert list(result.block_traces) == [name for name, _ in model.named_parameters()]
    for (name, estimate), block in zip(result.block_traces.items(), diagonal):
        assert abs(estimate - float(block.sum())) <= 4 * result.block_std_errors[name] + 1e-12, name


def test_hutchinson_stops_at_the_requested_precision(mlp_problem):
    result = hutchinson_trace(mlp_operator(mlp_problem), num_samples=400, seed=0, tol=0.1)
    assert result.converged and result.num_samples < 400
    assert result.std_error <= 0.1 * abs(result.trace)


def test_density_integrates_to_one_and_covers_the_spectrum(mlp_problem):
    spectrum = torch.linalg.eigvalsh(mlp_problem[3])
    result = spectral_density(mlp_operator(mlp_problem), num_runs=3, num_steps=40, seed=0)
    assert float(torch.trapezoid(result.density, result.grid)) == pytest.approx(1.0, abs=1e-3)
    assert bool((result.density >= 0).all())
    assert result.grid[0] <= spectrum[0] and result.grid[-1] >= spectrum[-1]
    nodes = torch.cat(result.nodes)  # Ritz values lie inside the spectrum, and the extremes converge first
    assert nodes.min() >= spectrum[0] - 1e-8 and nodes.max() <= spectrum[-1] + 1e-8
    assert float(nodes.max()) == pytest.approx(float(spectrum[-1]), rel=1e-6)
    for weights in result.weights:
        assert float(weights.sum()) == pytest.approx(1.0, abs=1e-10)
    assert result.hvp_count == 3 * 40


def test_same_seed_same_results(mlp_problem):
    def run(seed: int):
        return (power_iteration(mlp_operator(mlp_problem), seed=seed).eigenvalues,
                lanczos(mlp_operator(mlp_problem), k=2, seed=seed).eigenvalues,
                hutchinson_trace(mlp_operator(mlp_problem), num_samples=5, seed=seed).samples,
                spectral_density(mlp_operator(mlp_problem), num_runs=2, num_steps=8, seed=seed).density)

    first, again, other = run(7), run(7), run(8)
    assert first[:3] == again[:3] and torch.equal(first[3], again[3])
    assert first[2] != other[2]


def test_uneven_batches_give_the_mean_loss_hessian(mlp_problem):
    model, inputs, targets, hessian = mlp_problem
    batches = [(inputs[:20], targets[:20]), (inputs[20:], targets[20:])]
    v = torch.randn(hessian.shape[0], generator=_generator(6), dtype=DTYPE)
    for reuse in (False, True):
        op = HessianOperator(model, F.cross_entropy, batches, reuse_graph=reuse)
        torch.testing.assert_close(op.matvec(v), hessian @ v, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------------------- BatchNorm

def make_convnet() -> nn.Module:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Dropout(0.5), nn.Linear(4, 3))
    model = _init(model.to(DTYPE), 1, scale=0.5)
    with torch.no_grad():  # running statistics that differ from any one batch's own
        model.train()
        for seed in range(3):
            model(torch.randn(16, 3, 6, 6, generator=_generator(seed), dtype=DTYPE) * 2 + 1)
    return model


def test_batchnorm_modes_differ_and_leave_the_model_as_found():
    model = make_convnet()
    model.train()
    model[5].eval()  # a mixed state must come back exactly
    flags = [m.training for m in model.modules()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gen = _generator(9)
    batch = (torch.randn(8, 3, 6, 6, generator=gen, dtype=DTYPE), torch.randint(0, 3, (8,), generator=gen))
    products = {}
    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=_generator(10), dtype=DTYPE)
    for mode in ("eval", "train"):
        kept, fresh = (HessianOperator(model, F.cross_entropy, [batch], bn_mode=mode, reuse_graph=reuse)
                       for reuse in (True, False))
        products[mode] = kept.matvec(v)
        for product in (kept.matvec(v), fresh.matvec(v), fresh.matvec(v)):  # dropout stays off
            torch.testing.assert_close(product, products[mode], rtol=1e-12, atol=1e-14)
        assert [m.training for m in model.modules()] == flags
        for key, value in model.state_dict().items():
            assert torch.equal(value, before[key]), f"{mode} mode changed {key}"
    assert not torch.allclose(products["eval"], products["train"], rtol=1e-3)


def test_unknown_bn_mode_is_rejected():
    with pytest.raises(ValueError, match="bn_mode"):
        HessianOperator(make_convnet(), F.cross_entropy, [DUMMY_BATCH], bn_mode="frozen")


# ----------------------------------------------------------------------------------------------- warm starts

def test_a_start_at_the_top_eigenvector_converges_at_once(quadratic_matrix):
    """From the exact top eigenvector Lanczos stops after one product (its residual is zero) and power iteration
    after the two its stopping rule needs; from a Gaussian both take several."""
    top = torch.linalg.eigh(quadratic_matrix).eigenvectors[:, -1]
    cold = lanczos(quadratic_operator(quadratic_matrix), k=1, max_iter=20, tol=1e-6)
    warm = lanczos(quadratic_operator(quadratic_matrix), k=1, max_iter=20, tol=1e-6, start=top)
    assert warm.hvp_count == 1 < cold.hvp_count and warm.eigenvalues[0] == pytest.approx(TOP[0], rel=1e-10)
    power = power_iteration(quadratic_operator(quadratic_matrix), max_iter=20, tol=1e-6, start=top)
    assert power.hvp_count == 2 and power.eigenvalues[0] == pytest.approx(TOP[0], rel=1e-10)


@pytest.mark.parametrize("tol", [1e-2, 1e-8])  # the in-training probe's tolerance, and a tight one
def test_a_warm_start_near_a_lower_eigenvector_still_finds_the_top(quadratic_matrix, tol):
    """A start mostly along the second eigenvector (a previous probe's, after the top two eigenvalues swapped) but
    with a 5% top component: Lanczos still reports λ_max; the start is a hint, not a constraint. (With a much smaller
    top component a loose tolerance can stop at λ₂, as a cold start can: docs/policy.md.)"""
    vectors = torch.linalg.eigh(quadratic_matrix).eigenvectors
    start = vectors[:, -2] + 0.05 * vectors[:, -1] + 0.01 * vectors[:, 0]
    result = lanczos(quadratic_operator(quadratic_matrix), k=1, max_iter=20, tol=tol, start=start)
    assert result.eigenvalues[0] == pytest.approx(TOP[0], rel=max(tol, 1e-6))


def test_a_start_of_the_wrong_length_is_refused(quadratic_matrix):
    with pytest.raises(ValueError, match=r"shape \(19,\).*\(20,\)"):
        lanczos(quadratic_operator(quadratic_matrix), start=torch.ones(19, dtype=DTYPE))
    with pytest.raises(ValueError, match="start vector"):
        power_iteration(quadratic_operator(quadratic_matrix), start=torch.ones(21, dtype=DTYPE))
