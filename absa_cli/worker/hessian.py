"""Curvature of a saved model: what ``absa hessian`` computes (worker/: torch).

The model and the probe data are rebuilt from a config the command chose (the checkpoint's recorded recipe over
its run's config.yaml or a preset: cli/hessian.py), the weights come from a checkpoint loaded with
``weights_only=True``, and every quantity is computed by ``absa_cli.curvature`` on one
``HessianOperator`` over ``num_batches`` unaugmented training batches drawn from ``seed``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from absa_cli.config import RunConfig, seed_problem
from absa_cli.curvature import HessianOperator, hutchinson_trace, lanczos, power_iteration, spectral_density
from absa_cli.data import open_split
from absa_cli.data.order import probe_indices
from absa_cli.dist import DistContext, LocalContext
from absa_cli.errors import UserError, first_line
from absa_cli.models import build_model


@dataclass(frozen=True)
class HessianOptions:
    top_k: int = 1
    method: str = "lanczos"  # lanczos | power (power gives only the top eigenvalue)
    max_iter: int = 100
    tol: float = 1e-4
    trace: bool = False
    trace_samples: int = 50
    density: bool = False
    density_runs: int = 3
    density_steps: int = 40
    per_layer: bool = False
    batch_size: int = 128
    num_batches: int = 1
    bn_mode: str = "eval"
    seed: int = 0


def check_options(options: HessianOptions) -> None:
    """User errors in the options, found before any model, data or worker is built."""
    if options.method == "power" and options.top_k != 1:
        raise UserError(f"--method power finds only the top eigenvalue; use --method lanczos for --top-k "
                        f"{options.top_k}")
    if not 0 <= options.tol < 1:  # inf or 1e400 stopped at the second product and printed that as converged
        raise UserError(f"--tol is a relative tolerance, from 0 up to (not including) 1, got {options.tol:g}; e.g. "
                        f"--tol 1e-4")
    problem = seed_problem("--seed", options.seed)
    if problem:
        raise UserError(problem)


def lanczos_iterations(options: HessianOptions) -> int:
    """The iterations Lanczos gets: ``max_iter``, raised to ``top_k + 2`` (it needs more steps than eigenvalues)."""
    return options.max_iter if options.method == "power" else max(options.max_iter, options.top_k + 2)


def check_against_model(options: HessianOptions, model: torch.nn.Module) -> int:
    """User errors that need the model (built in a moment, unlike the analysis): ``--top-k`` beyond the number of
    parameters. Returns the iterations the eigen solver will get (``lanczos_iterations``)."""
    dim = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if options.top_k > dim:
        raise UserError(f"--top-k {options.top_k} is more eigenvalues than the model has parameters ({dim:,}); "
                        f"pass --top-k {dim} or fewer (Lanczos resolves the top few in --max-iter iterations; "
                        f"more need a larger --max-iter)")
    return lanczos_iterations(options)


FIX = "pass the preset and the KEY=VALUE overrides it was trained with: --preset NAME KEY=VALUE ..."


def rebuild_model(config: RunConfig, state: dict[str, Any], fix: str = FIX) -> torch.nn.Module:
    """The model ``config`` builds, with the checkpoint's weights; one line naming the first tensor that does not
    fit (and ``fix``) otherwise."""
    from absa_cli.catalog import dataset_spec

    spec = dataset_spec(config.data.name)
    model = build_model(config.model.name, spec.num_classes, spec.image_size, width=config.model.width)
    weights = state.get("model")
    problem = _misfit(model.state_dict(), weights) if isinstance(weights, dict) else "it holds no model weights"
    if problem is None:
        try:
            model.load_state_dict(weights)
        except RuntimeError as exc:  # what _misfit does not compare (a dtype torch cannot copy, ...)
            problem = first_line(exc)
    if problem is not None:
        raise UserError(f"the checkpoint's weights do not fit {config.model.name} (model.width="
                        f"{config.model.width:g}) for {config.data.name}: {problem}; {fix}") from None
    broken = [name for name, tensor in model.state_dict().items()
              if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if broken:  # every product would be NaN: nothing to measure
        more = f" (and {len(broken) - 1} more tensors)" if len(broken) > 1 else ""
        raise UserError(f"the checkpoint's weights are not finite: {broken[0]} holds NaN or infinite values{more}; "
                        f"inspect an earlier checkpoint of the run")
    return model


def _misfit(expected: dict[str, torch.Tensor], weights: dict[str, Any]) -> str | None:
    """The first tensor the checkpoint and the model disagree on (shape, or one without the other), and how many
    do; None when every name and shape matches. torch's own message lists them all over many lines."""
    def shape(value: Any) -> list[int]:  # a checkpoint's entry need not be a tensor
        return list(getattr(value, "shape", []))

    wrong = [f"{name} is {shape(weights[name])} in the checkpoint, {shape(tensor)} in the model"
             for name, tensor in expected.items() if name in weights and shape(weights[name]) != shape(tensor)]
    wrong += [f"the model's {name} is not in the checkpoint" for name in expected if name not in weights]
    wrong += [f"the checkpoint's {name} is not in the model" for name in weights if name not in expected]
    if not wrong:
        return None
    return wrong[0] + (f" (and {len(wrong) - 1} more tensors differ)" if len(wrong) > 1 else "")


def probe_batches(config: RunConfig, options: HessianOptions,
                  ctx: DistContext | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's shard of each probe batch (``ctx``: the group; one process by default): the same samples
    whatever the number of workers."""
    data = config.data
    train_set = open_split(data, data.train_split)
    ctx = ctx or LocalContext()
    return [train_set.get_batch(ctx.shard(batch), None)
            for batch in probe_indices(len(train_set), options.batch_size, options.num_batches, options.seed)]


def analyse(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]],
            options: HessianOptions, ctx: DistContext | None = None) -> dict[str, Any]:
    """Top eigenvalues, and optionally trace (± standard error), per-layer traces and the spectral density.

    With a distributed ``ctx`` every rank passes its shard and every HVP is averaged over the ranks: the same
    numbers as one process over all the samples.
    """
    started = time.perf_counter()
    operator = HessianOperator(model, F.cross_entropy, batches, ctx, bn_mode=options.bn_mode)
    check_options(options)
    if options.method == "power":
        eigen = power_iteration(operator, max_iter=options.max_iter, tol=options.tol, seed=options.seed)
    else:
        eigen = lanczos(operator, k=options.top_k, max_iter=lanczos_iterations(options),
                        tol=options.tol, seed=options.seed)
    if not all(math.isfinite(value) for value in eigen.eigenvalues):  # finite weights, yet the products overflow
        raise UserError("the curvature at this checkpoint is not finite (a Hessian-vector product was NaN or "
                        "infinite: the loss on the probe samples overflows?); inspect an earlier checkpoint of the run")
    # each eigenvalue with whether it met the tolerance (Lanczos: its own residual; power: the run's verdict)
    residuals = eigen.residuals or [None] * len(eigen.eigenvalues)
    pairs = sorted(((value, eigen.converged or (residual is not None and residual <= options.tol * abs(value)))
                    for value, residual in zip(eigen.eigenvalues, residuals)), key=lambda pair: -pair[0])
    result: dict[str, Any] = {
        "top_eigenvalues": [value for value, _ in pairs], "method": options.method,
        "eigen_converged": eigen.converged, "eigen_converged_each": [ok for _, ok in pairs],
        "iterations": eigen.iterations, "trace": None, "trace_std_error": None,
        "num_parameters": operator.dim, "num_samples": _total_samples(batches, ctx),
        "bn_mode": options.bn_mode, "seed": options.seed,
    }
    if options.trace or options.per_layer:
        trace = hutchinson_trace(operator, num_samples=options.trace_samples, seed=options.seed)
        result["trace"], result["trace_std_error"] = trace.trace, trace.std_error
        if options.per_layer:
            result["per_layer_trace"] = _by_layer(trace.block_traces)
    if options.density:
        density = spectral_density(operator, num_runs=options.density_runs, num_steps=options.density_steps,
                                   seed=options.seed)
        step = max(1, len(density.grid) // 400)  # enough points to redraw the curve, few enough to print
        result["density"] = {"grid": density.grid[::step].tolist(), "values": density.density[::step].tolist(),
                             "sigma": density.sigma}
        result["_density_full"] = (density.grid, density.density)
    operator.release()
    result["hvp_count"] = operator.hvp_count
    result["seconds"] = time.perf_counter() - started
    return result


def _total_samples(batches: list[tuple[torch.Tensor, torch.Tensor]], ctx: DistContext | None) -> int:
    count = torch.tensor([float(sum(len(labels) for _, labels in batches))])
    if ctx is not None:
        ctx.all_reduce_sum([count])
    return int(count.item())


def _by_layer(block_traces: dict[str, float]) -> dict[str, float]:
    """Per-parameter traces summed per module (``layer1.0.conv1.weight`` → ``layer1.0.conv1``)."""
    layers: dict[str, float] = {}
    for name, value in block_traces.items():
        layer = name.rsplit(".", 1)[0] if "." in name else name
        layers[layer] = layers.get(layer, 0.0) + value
    return layers


def plot_density(result: dict[str, Any], path: str, title: str) -> None:
    """An image of the eigenvalue density (log-scale y) with the top eigenvalues marked, in the format of ``path``'s
    extension (.png, .pdf, .svg, ...)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("--plot needs matplotlib; install it with `pip install 'absa-train[plot]'`") from None
    grid, density = result["_density_full"]
    figure, axes = plt.subplots(figsize=(7, 4), dpi=120)
    floor = max(float(density.max()) * 1e-8, 1e-12)
    axes.semilogy(grid.numpy(), density.clamp_min(floor).numpy(), color="tab:blue", lw=1.5, label="density (SLQ)")
    for rank, value in enumerate(result["top_eigenvalues"]):
        axes.axvline(value, color="tab:red", ls="--", lw=1, label="top eigenvalues" if rank == 0 else None)
    axes.set_xlabel("eigenvalue")
    axes.set_ylabel("density (log scale)")
    axes.set_ylim(bottom=floor)
    axes.set_title(title)
    axes.legend(loc="upper right")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    try:
        figure.savefig(path)
    except (OSError, ValueError) as exc:  # checked beforehand; a disk that fills meanwhile still gets one line
        raise UserError(f"cannot write the plot {path} ({first_line(exc)}); the numbers above stand") from None
    finally:
        plt.close(figure)
