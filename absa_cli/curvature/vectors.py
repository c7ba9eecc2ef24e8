"""Flat-vector arithmetic and seeded random probes for the curvature algorithms (curvature/: torch only).

Every algorithm here works on one flat vector of all parameters (``HessianOperator.flatten``) rather than a list of
per-parameter tensors: a flat vector is one kernel per operation, one collective per all-reduce, and a Lanczos basis
is a plain matrix. Scalars that decide convergence (dot products, norms) are accumulated in float64 because a
float32 sum over millions of parameters loses the digits that a relative tolerance of 1e-3 looks at.

Probes come from a local ``torch.Generator`` drawn on the CPU, never the global RNG: the same seed gives the same
probe on every worker and every device, so distributed ranks agree without a broadcast and training's RNG stream is
untouched.
"""

from __future__ import annotations

import math

import torch


def dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """``aᵀb`` accumulated in float64 (a copy for float32 inputs; cheap next to one Hessian-vector product)."""
    return float(torch.dot(a.to(torch.float64), b.to(torch.float64)))


def norm(a: torch.Tensor) -> float:
    return math.sqrt(max(dot(a, a), 0.0))


def normalise(a: torch.Tensor) -> torch.Tensor:
    """``a / ‖a‖``; a zero vector is an error the caller must handle (it means ``H·v = 0``)."""
    length = norm(a)
    if length == 0.0:
        raise ZeroDivisionError("cannot normalise a zero vector")
    return a / length


def generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(int(seed))


def gaussian(dim: int, gen: torch.Generator, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A standard normal vector, drawn on the CPU so that the bits do not depend on ``device``."""
    return torch.randn(dim, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)


def rademacher(dim: int, gen: torch.Generator, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Entries ±1 with probability ½ each: the minimum-variance Hutchinson probe (``v_i² = 1`` exactly)."""
    signs = torch.randint(0, 2, (dim,), generator=gen, dtype=torch.int8)
    return (signs.to(dtype) * 2 - 1).to(device)
