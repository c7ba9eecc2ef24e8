"""Curvature engine (curvature/: torch and ``absa_cli.dist``; never ray).

One Hessian-vector-product primitive, ``HessianOperator``, feeds every estimate: power iteration (the paper's probe),
Lanczos top-k, Hutchinson's trace and the stochastic-Lanczos-quadrature density. Products are averaged over batches
and over workers through ``DistContext``, so the in-training probe and ``absa hessian`` on many GPUs share the code.
"""

from absa_cli.curvature.density import DensityResult, spectral_density
from absa_cli.curvature.eigen import EigenResult, lanczos, power_iteration
from absa_cli.curvature.hvp import BN_MODES, HessianOperator, SymmetricOperator, probe_mode
from absa_cli.curvature.trace import TraceResult, hutchinson_trace
from absa_cli.curvature.vectors import dot, norm, normalise

__all__ = [
    "BN_MODES",
    "DensityResult",
    "EigenResult",
    "HessianOperator",
    "SymmetricOperator",
    "TraceResult",
    "dot",
    "hutchinson_trace",
    "lanczos",
    "norm",
    "normalise",
    "power_iteration",
    "probe_mode",
    "spectral_density",
]
