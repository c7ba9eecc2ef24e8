"""absa's curvature engine against PyHessian 0.1, side by side in one process: same model, weights, batch, device.

For ResNet-20 (CIFAR-shaped: 32 px, 10 classes) at random init and from a briefly trained absa checkpoint:

1. Reference: absa ``lanczos`` with ``--reference-steps`` products and a tolerance it cannot meet, so it runs them
   all. Before anything is timed the script checks that both libraries compute the *same* Hessian (BatchNorm in eval
   mode on both sides: PyHessian calls ``model.eval()``, absa's probe uses ``bn_mode="eval"``): one product with a
   random vector must agree to 1e-3, and PyHessian's Rayleigh quotient at absa's reference eigenvector must equal the
   reference λ_max to 1e-3. A mismatch stops the script.
2. Top eigenvalue. PyHessian ``hessian(...).eigenvalues()`` (power iteration), absa ``power_iteration`` and absa
   ``lanczos`` each run once per seed, round-robin (the order rotates each seed, so machine load hits all alike), with
   no stopping rule and a cap on products. Each method's settings (every method: a fixed product count from
   ``FIXED_ITERS``; PyHessian and absa power also: stop on relative change < ``tol`` ∈ ``TOLS`` with ``maxIter=100``)
   are deterministic functions of that sequence of estimates, so one capped run per seed tells what every setting
   returns and after how many products.
   A setting's **seconds** is the wall time from building the Hessian object (PyHessian's constructor runs the
   forward and the create-graph backward; absa's operator does the same inside its first product) to the moment the
   setting would return: the time at which the next product starts (timestamped by a wrapper around PyHessian's
   module-level ``hessian_vector_product`` and around ``HessianOperator.matvec``), or the end of the run. This
   charges each method exactly the work its setting does, plus at most one normalisation (microseconds next to a
   product). The table reports, per method, the cheapest setting whose λ_max is within ``--target`` of the reference
   for *every* seed: HVPs = the most over seeds, seconds = the median over seeds, rel. error = the worst over seeds.
3. Trace (Hutchinson, the same number of Rademacher probes on both sides) and density (SLQ, one run of the same
   number of Lanczos steps): ``--aux-repeats`` interleaved repeats, median seconds.

HVPs of PyHessian are counted by the wrapper above (every product PyHessian 0.1 takes on a single batch goes through
that function); absa's come from ``HessianOperator.hvp_count``.

PyHessian is *not* a dependency of absa and none of its code is in absa. Install it into a folder of its own and
point the script at it (PyHessian 0.1 needs only torch and numpy, which absa's environment has):

    .venv/bin/pip install --target /tmp/pyhessian-env --no-deps pyhessian==0.1
    .venv/bin/python benchmarks/curvature_vs_pyhessian.py --pyhessian-path /tmp/pyhessian-env

PyHessian 0.1's ``density()`` calls ``torch.eig``, which PyTorch 2.x keeps only as a stub that raises; in this
process only, the script supplies a stand-in built on ``torch.linalg.eigh`` (the Lanczos matrix is symmetric, so the
result is the same).

Threads: on a CPU shared with other jobs use ``--threads 1``. With 2 threads on 2 busy cores, OpenMP's barriers wait
for a descheduled thread: on this project's machine a 10-product Lanczos run at batch 8 took anywhere from 3 to 48 s
with 2 threads and 0.8 s, steadily, with 1.

Without ``--checkpoint`` the script first trains the "trained" state with absa itself (``absa train quickstart``
with ResNet-20 overrides, see ``TRAIN_OVERRIDES``; a few minutes on 2 CPU cores, not part of the timings) and uses
the last checkpoint. ``--json PATH`` also writes every number measured.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from absa_cli.run import checkpoint
from absa_cli.curvature import HessianOperator, hutchinson_trace, lanczos, power_iteration, spectral_density
from absa_cli.data import build_dataset
from absa_cli.models import build_model

INSTALL_HINT = ".venv/bin/pip install --target /tmp/pyhessian-env --no-deps pyhessian==0.1"
TRAIN_OVERRIDES = ("model.name=resnet20", "model.width=1.0", "epochs=5", "data.train_size=4000",
                   "data.test_size=500", "policy.name=fixed")
FIXED_ITERS = (3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100)  # fixed product counts, every method
TOLS = (1e-2, 1e-3, 1e-4, 1e-5)  # stop-on-relative-change settings (with maxIter=100, PyHessian's default)
METHODS = ("pyhessian", "absa-power", "absa-lanczos")


# ------------------------------------------------------------------------------------------------ setup


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pyhessian-path", help="folder holding the pyhessian package (pip install --target ...)")
    p.add_argument("--checkpoint", help="absa checkpoint of ResNet-20 for the 'trained' state (default: train one)")
    p.add_argument("--states", default="init,trained", help="comma list of init, trained")
    p.add_argument("--batch-size", type=int, default=128, help="one fixed unaugmented batch of 'shapes' train images")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU; 1 on a shared machine)")
    p.add_argument("--seeds", type=int, default=3, help="start vectors per method (the repeats of the eigen runs)")
    p.add_argument("--target", type=float, default=1e-3, help="relative error in λ_max a setting must reach")
    p.add_argument("--reference-steps", type=int, default=40, help="Lanczos steps of the reference λ_max")
    p.add_argument("--power-cap", type=int, default=15, help="products per power-iteration run (PyHessian, absa)")
    p.add_argument("--lanczos-cap", type=int, default=10, help="products per absa Lanczos run")
    p.add_argument("--trace-samples", type=int, default=6, help="Hutchinson probes, both libraries")
    p.add_argument("--density-steps", type=int, default=6, help="SLQ Lanczos steps (one run), both libraries")
    p.add_argument("--aux-repeats", type=int, default=3, help="timed repeats of trace and density")
    p.add_argument("--json", help="also write all measurements to this file")
    return p.parse_args()


def import_pyhessian(path: str | None):
    """PyHessian's module ``pyhessian.hessian`` (the class and the HVP function live there), or None."""
    if path:
        sys.path.insert(0, str(Path(path).resolve()))
    try:
        module = importlib.import_module("pyhessian.hessian")  # not `pyhessian.hessian`: the package shadows it
    except ImportError:
        print(f"pyhessian is not importable; PyHessian columns are skipped. Install it apart from absa:\n"
              f"  {INSTALL_HINT}\nand pass --pyhessian-path /tmp/pyhessian-env", file=sys.stderr)
        return None
    # PyHessian 0.1's density() calls torch.eig, which PyTorch 2.x keeps only as a stub that raises: replace it in
    # this process (absa never calls torch.eig).

    def eig(matrix: torch.Tensor, eigenvectors: bool = False):
        values, vectors = torch.linalg.eigh(matrix)  # the SLQ matrix is symmetric tridiagonal
        return torch.stack([values, torch.zeros_like(values)], dim=1), vectors

    torch.eig = eig
    return module


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "load_avg_1min_start": round(os.getloadavg()[0], 2),
            "date": time.strftime("%Y-%m-%d")}


def train_checkpoint() -> Path:
    """Train the 'trained' state with absa itself; returns its last checkpoint."""
    runs_dir = Path(tempfile.mkdtemp(prefix="absa-bench-runs-"))
    command = [sys.executable, "-m", "absa_cli", "train", "quickstart", *TRAIN_OVERRIDES, "--runs-dir", str(runs_dir)]
    print("training the 'trained' state (not timed):", " ".join(command[2:]), file=sys.stderr)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return sorted(runs_dir.glob("*/checkpoints/epoch-*.pt"))[-1]


def build_states(names: list[str], checkpoint_path: str | None, device: torch.device) -> dict[str, torch.nn.Module]:
    states = {}
    for name in names:
        torch.manual_seed(0)
        model = build_model("resnet20", 10, 32)
        if name == "trained":
            path = Path(checkpoint_path) if checkpoint_path else train_checkpoint()
            model.load_state_dict(checkpoint.load(path)["model"])
            print(f"trained state: {path}", file=sys.stderr)
        elif name != "init":
            raise SystemExit(f"unknown state {name!r}; use init and/or trained")
        states[name] = model.to(device).eval()
    return states


# ------------------------------------------------------------------------------------------------ meters


class PyHessianMeter:
    """Wraps ``pyhessian.hessian.hessian_vector_product``: counts products, timestamps their starts, records vᵀHv."""

    def __init__(self, module) -> None:
        self.module = module
        self.original = module.hessian_vector_product
        self.group_product = importlib.import_module("pyhessian.utils").group_product
        self.starts: list[float] = []
        self.estimates: list[float] = []
        module.hessian_vector_product = self._product

    def reset(self) -> None:
        self.starts, self.estimates = [], []

    def _product(self, grads, params, v):
        self.starts.append(time.perf_counter())
        hv = self.original(grads, params, v)
        self.estimates.append(float(self.group_product(hv, v)))  # PyHessian's own Rayleigh quotient, as it computes it
        return hv


def metered_operator(model, batch) -> tuple[HessianOperator, list[float]]:
    """An absa operator whose products are timestamped at their start."""
    op = HessianOperator(model, F.cross_entropy, [batch], bn_mode="eval")
    starts: list[float] = []
    product = op.matvec

    def matvec(v: torch.Tensor) -> torch.Tensor:
        starts.append(time.perf_counter())
        return product(v)

    op.matvec = matvec
    return op, starts


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------ eigen runs


@dataclass
class Curve:
    """One capped run: the estimate after each product, and the seconds at which a setting stopping there returns."""

    method: str
    seed: int
    estimates: list[float]
    stop_s: list[float]


def stop_times(t0: float, starts: list[float], end: float) -> list[float]:
    return [s - t0 for s in starts[1:]] + [end - t0]


def run_curve(method: str, model, batch, seed: int, cap: int, ph, meter, device) -> Curve:
    model.zero_grad(set_to_none=True)
    sync(device)
    if method == "pyhessian":
        meter.reset()
        torch.manual_seed(seed)  # PyHessian draws its start vector from the global generator
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # backward(create_graph=True) reference-cycle warning
            h = ph.hessian(model, torch.nn.CrossEntropyLoss(), data=batch, cuda=device.type == "cuda")
            h.eigenvalues(maxIter=cap, tol=0.0, top_n=1)  # tol 0: never stops early
        sync(device)
        end = time.perf_counter()
        del h
        model.zero_grad(set_to_none=True)
        return Curve(method, seed, list(meter.estimates), stop_times(t0, meter.starts, end))
    t0 = time.perf_counter()
    op, starts = metered_operator(model, batch)
    if method == "absa-power":
        result = power_iteration(op, max_iter=cap, tol=0.0, seed=seed)
    else:
        result = lanczos(op, k=1, max_iter=cap, tol=0.0, seed=seed)
    sync(device)
    end = time.perf_counter()
    op.release()
    assert result.hvp_count == len(starts) == len(result.history)
    return Curve(method, seed, list(result.history), stop_times(t0, starts, end))


def pyhessian_rule(estimates: list[float], max_iter: int, tol: float) -> int | None:
    """Products after which PyHessian's eigenvalues(maxIter, tol) returns (it returns the estimate before the last
    product when the change is small); None when the capped run is too short to tell."""
    for i in range(1, min(max_iter, len(estimates))):
        if abs(estimates[i - 1] - estimates[i]) / (abs(estimates[i - 1]) + 1e-6) < tol:
            return -(i + 1)  # negative: returns estimates[i - 1] after i + 1 products
    return max_iter if max_iter <= len(estimates) else None


def absa_power_rule(estimates: list[float], max_iter: int, tol: float) -> int | None:
    for i in range(1, min(max_iter, len(estimates))):
        if abs(estimates[i] - estimates[i - 1]) < tol * max(abs(estimates[i - 1]), 1e-30):
            return i + 1
    return max_iter if max_iter <= len(estimates) else None


def settings_of(method: str) -> list[tuple[str, callable]]:
    """(label, rule) pairs; a rule maps a curve's estimates to products used (negative: PyHessian's lagged value)."""
    if method == "absa-lanczos":
        return [(f"max_iter={m}", lambda e, m=m: m if m <= len(e) else None) for m in FIXED_ITERS]
    rule, names = (pyhessian_rule, ("maxIter", "tol")) if method == "pyhessian" else (absa_power_rule, ("max_iter", "tol"))
    out = [(f"{names[0]}=100, {names[1]}={t:g}", lambda e, t=t, r=rule: r(e, 100, t)) for t in TOLS]
    out += [(f"{names[0]}={m}, {names[1]}=0", lambda e, m=m, r=rule: r(e, m, 0.0)) for m in FIXED_ITERS]
    return out


@dataclass
class Row:
    state: str
    method: str
    setting: str
    eigenvalue: float | None  # median over seeds
    rel_error: float | None  # worst over seeds
    hvps: int | None  # most over seeds
    seconds: float | None  # median over seeds
    note: str = ""
    per_seed: list[dict] = field(default_factory=list)


def evaluate(state: str, method: str, label: str, rule, curves: list[Curve], reference: float) -> Row | None:
    per_seed = []
    for curve in curves:
        stop = rule(curve.estimates)
        if stop is None:
            return None
        hvps = abs(stop)
        value = curve.estimates[hvps - 2] if stop < 0 else curve.estimates[hvps - 1]
        per_seed.append({"seed": curve.seed, "eigenvalue": value, "hvps": hvps, "seconds": curve.stop_s[hvps - 1],
                         "rel_error": abs(value - reference) / abs(reference)})
    return Row(state, method, label, statistics.median(s["eigenvalue"] for s in per_seed),
               max(s["rel_error"] for s in per_seed), max(s["hvps"] for s in per_seed),
               statistics.median(s["seconds"] for s in per_seed), per_seed=per_seed)


def cheapest(state: str, method: str, curves: list[Curve], reference: float, target: float) -> Row:
    rows = [evaluate(state, method, label, rule, curves, reference) for label, rule in settings_of(method)]
    good = [r for r in rows if r is not None and r.rel_error <= target]
    if good:
        return min(good, key=lambda r: (r.hvps, r.seconds))
    cap = len(curves[0].estimates)
    worst = max(abs(c.estimates[-1] - reference) / abs(reference) for c in curves)
    return Row(state, method, f"none within {cap} products", None, worst, cap,
               statistics.median(c.stop_s[-1] for c in curves), note=f"> {cap} HVPs")


def oracle_hvps(curve: Curve, reference: float, target: float) -> int | None:
    """Fewest products after which the estimate stays within target to the end of the run (None: never)."""
    inside = [abs(e - reference) <= target * abs(reference) for e in curve.estimates]
    if not inside[-1]:
        return None
    k = len(inside)
    while k > 0 and inside[k - 1]:
        k -= 1
    return k + 1


# ------------------------------------------------------------------------------------------------ reference, checks


def reference(model, batch, steps: int) -> tuple[list[float], float, torch.Tensor, HessianOperator]:
    """Top two eigenvalues (λ₂/λ₁ sets how fast power iteration converges), λ₁'s residual bound and eigenvector."""
    op = HessianOperator(model, F.cross_entropy, [batch], bn_mode="eval")
    result = lanczos(op, k=2, max_iter=steps, tol=0.0, seed=10_000, return_eigenvectors=True)
    return result.eigenvalues, result.residuals[0], result.eigenvectors[0], op


def check_same_hessian(model, batch, op: HessianOperator, top: float, vector: torch.Tensor, ph, device) -> dict:
    """One PyHessian product against absa's on a random vector, and PyHessian's vᵀHv at absa's top eigenvector."""
    model.zero_grad(set_to_none=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h = ph.hessian(model, torch.nn.CrossEntropyLoss(), data=batch, cuda=device.type == "cuda")
    random = torch.randn(op.dim, generator=torch.Generator().manual_seed(1)).to(op.dtype).to(op.device)
    ph_product = op.flatten(ph.hessian_vector_product(h.gradsH, h.params, [t.detach() for t in op.split(random)]))
    absa_product = op.matvec(random)
    product_error = float((ph_product - absa_product).norm() / absa_product.norm())
    at_top = op.flatten(ph.hessian_vector_product(h.gradsH, h.params, [t.detach() for t in op.split(vector)]))
    ph_rayleigh = float(at_top.double() @ vector.double())
    del h
    model.zero_grad(set_to_none=True)
    check = {"hvp_relative_difference": product_error, "pyhessian_rayleigh_at_reference": ph_rayleigh,
             "rayleigh_relative_difference": abs(ph_rayleigh - top) / abs(top)}
    if product_error > 1e-3 or check["rayleigh_relative_difference"] > 1e-3:
        raise SystemExit(f"PyHessian and absa do not compute the same Hessian: {check}")
    return check


# ------------------------------------------------------------------------------------------------ trace, density


def run_aux(task: str, method: str, model, batch, seed: int, args, ph, meter, device) -> dict:
    """One timed trace or density run; returns seconds, products and the headline number."""
    model.zero_grad(set_to_none=True)
    sync(device)
    t0 = time.perf_counter()
    if method == "pyhessian":
        meter.reset()
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            h = ph.hessian(model, torch.nn.CrossEntropyLoss(), data=batch, cuda=device.type == "cuda")
            if task == "trace":
                # tol=-inf: exactly maxIter probes. (tol=0 is not enough: PyHessian divides the change by the running
                # mean, and a negative running mean makes the ratio negative, so it stopped after 1 probe.)
                value = float(sum(h.trace(maxIter=args.trace_samples, tol=-math.inf)) / len(meter.starts))
            else:
                nodes, _ = h.density(iter=args.density_steps, n_v=1)
                value = float(max(nodes[0]))
        hvps = len(meter.starts)
        del h
    else:
        op = HessianOperator(model, F.cross_entropy, [batch], bn_mode="eval")
        if task == "trace":
            value = hutchinson_trace(op, num_samples=args.trace_samples, seed=seed).trace
        else:
            value = float(spectral_density(op, num_runs=1, num_steps=args.density_steps, seed=seed).nodes[0].max())
        hvps = op.hvp_count
        op.release()
    sync(device)
    seconds = time.perf_counter() - t0
    model.zero_grad(set_to_none=True)
    return {"task": task, "method": method, "seed": seed, "seconds": seconds, "hvps": hvps, "value": value}


# ------------------------------------------------------------------------------------------------ one model state


def rotate(items: tuple | list, by: int) -> list:
    by %= len(items)
    return list(items[by:]) + list(items[:by])


def bench_state(state: str, model, batch, args, ph, meter, device) -> dict:
    methods = [m for m in METHODS if ph is not None or m != "pyhessian"]
    for method in methods:  # warm-up: allocator, kernels, autograd caches
        run_curve(method, model, batch, 0, 2, ph, meter, device)
    t0 = time.perf_counter()
    (top, second), residual, vector, op = reference(model, batch, args.reference_steps)
    print(f"[{state}] reference λ_max {top:.6g}, λ₂ {second:.6g} (absa Lanczos, {args.reference_steps} products, "
          f"residual bound {residual:.2g}) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    check = check_same_hessian(model, batch, op, top, vector, ph, device) if ph is not None else None
    op.release()
    if check:
        print(f"[{state}] same Hessian: HVP rel. diff {check['hvp_relative_difference']:.1e}, PyHessian vᵀHv at "
              f"absa's eigenvector rel. diff {check['rayleigh_relative_difference']:.1e}", file=sys.stderr)
    curves: dict[str, list[Curve]] = {m: [] for m in methods}
    for seed in range(args.seeds):
        for method in rotate(methods, seed):
            cap = args.lanczos_cap if method == "absa-lanczos" else args.power_cap
            curves[method].append(run_curve(method, model, batch, seed, cap, ph, meter, device))
            print(f"[{state}] seed {seed} {method}: {curves[method][-1].estimates[-1]:.6g} after {cap} products, "
                  f"{curves[method][-1].stop_s[-1]:.1f} s", file=sys.stderr)
    rows = []
    if ph is not None:
        default = evaluate(state, "pyhessian", "maxIter=100, tol=1e-3 (default)", lambda e: pyhessian_rule(e, 100, 1e-3),
                           curves["pyhessian"], top)
        rows.append(default or Row(state, "pyhessian", "maxIter=100, tol=1e-3 (default)", None, None, None, None,
                                   note=f"did not stop within {args.power_cap} products"))
    rows += [cheapest(state, m, curves[m], top, args.target) for m in methods]
    aux = []
    libraries = ["pyhessian", "absa"] if ph is not None else ["absa"]
    for repeat in range(args.aux_repeats):
        jobs = [(task, m) for task in ("trace", "density") for m in libraries]
        for task, method in rotate(jobs, repeat):
            aux.append(run_aux(task, method, model, batch, repeat, args, ph, meter, device))
            print(f"[{state}] {task} {method} repeat {repeat}: {aux[-1]['seconds']:.2f} s", file=sys.stderr)
    oracle = {m: [oracle_hvps(c, top, args.target) for c in curves[m]] for m in methods}
    return {"state": state, "reference": {"eigenvalue": top, "second": second, "residual": residual,
                                          "steps": args.reference_steps},
            "same_hessian": check, "rows": [asdict(r) for r in rows], "aux": aux, "oracle_hvps": oracle,
            "curves": [asdict(c) for cs in curves.values() for c in cs]}


# ------------------------------------------------------------------------------------------------ report


def fmt(value, spec: str, missing: str = "—") -> str:
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def eigen_table(results: list[dict], target: float) -> str:
    lines = ["| model state | method | setting | λ_max | rel. error (worst seed) | HVPs (most) | seconds (median) "
             "| PyHessian ÷ this |",
             "|---|---|---|---|---|---|---|---|"]
    for res in results:
        rows = res["rows"]
        tuned = next((r for r in rows if r["method"] == "pyhessian" and "default" not in r["setting"]), None)
        lines.append(f"| {res['state']} | reference: absa Lanczos | max_iter={res['reference']['steps']} | "
                     f"{res['reference']['eigenvalue']:.5g} | 0 | {res['reference']['steps']} | — | — |")
        for r in rows:
            ratio = "—"
            if tuned and tuned["seconds"] and r["seconds"]:
                ratio = f"{tuned['seconds'] / r['seconds']:.2f}×"
                if tuned["note"]:
                    ratio = "> " + ratio
            method = r["method"] if "default" in r["setting"] or r["note"] else f"{r['method']}, cheapest ≤ {target:g}"
            lines.append(f"| {r['state']} | {method} | {r['setting']} | {fmt(r['eigenvalue'], '.5g')} | "
                         f"{fmt(r['rel_error'], '.1e')} | {fmt(r['hvps'], 'd')} | {fmt(r['seconds'], '.2f')} | "
                         f"{ratio} |")
    return "\n".join(lines)


def aux_table(results: list[dict], args) -> str:
    lines = ["| model state | task | method | setting | result (median) | HVPs | seconds (median) | "
             "PyHessian ÷ this |", "|---|---|---|---|---|---|---|---|"]
    for res in results:
        for task in ("trace", "density"):
            runs = [a for a in res["aux"] if a["task"] == task]
            by_method = {m: [a for a in runs if a["method"] == m] for m in ("pyhessian", "absa")}
            base = statistics.median(a["seconds"] for a in by_method["pyhessian"]) if by_method["pyhessian"] else None
            for method, items in by_method.items():
                if not items:
                    continue
                seconds = statistics.median(a["seconds"] for a in items)
                setting = (f"{args.trace_samples} Rademacher probes" if task == "trace"
                           else f"1 run × {args.density_steps} Lanczos steps")
                what = "tr H" if task == "trace" else "top node"
                hvps = "–".join(str(n) for n in sorted({a["hvps"] for a in items}))
                lines.append(f"| {res['state']} | {task} | {method} | {setting} | {what} "
                             f"{statistics.median(a['value'] for a in items):.4g} | {hvps} | "
                             f"{seconds:.2f} | {fmt(base and base / seconds, '.2f')}{'×' if base else ''} |")
    return "\n".join(lines)


def oracle_table(results: list[dict]) -> str:
    lines = ["| model state | method | products until within target for good, per seed |", "|---|---|---|"]
    for res in results:
        for method, counts in res["oracle_hvps"].items():
            cap = next(len(c["estimates"]) for c in res["curves"] if c["method"] == method)
            lines.append(f"| {res['state']} | {method} | "
                         f"{', '.join(str(c) if c else f'> {cap}' for c in counts)} |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ph = import_pyhessian(args.pyhessian_path)
    meter = PyHessianMeter(ph) if ph is not None else None
    info = machine()
    started = time.perf_counter()
    states = build_states(args.states.split(","), args.checkpoint, device)
    data = build_dataset("shapes", "train", "", seed=0, size=args.batch_size)
    inputs, targets = data.get_batch(torch.arange(args.batch_size), None)  # unaugmented, like absa's probe
    batch = (inputs.to(device), targets.to(device))
    bench_start = time.perf_counter()
    results = [bench_state(name, model, batch, args, ph, meter, device) for name, model in states.items()]
    info.update(load_avg_1min_end=round(os.getloadavg()[0], 2), bench_seconds=round(time.perf_counter() - bench_start),
                total_seconds=round(time.perf_counter() - started), batch_size=args.batch_size, device=args.device)
    print(f"\nResNet-20 (32 px, 10 classes), batch {args.batch_size} of 'shapes', BatchNorm eval mode, fp32, "
          f"{args.device}, {info['threads']} threads; {info['cpu']}, {info['cores']} cores, torch {info['torch']}, "
          f"{info['date']}; load average {info['load_avg_1min_start']} → {info['load_avg_1min_end']}; "
          f"benchmark {info['bench_seconds']} s\n")
    for res in results:
        ref = res["reference"]
        print(f"{res['state']}: reference λ₁ {ref['eigenvalue']:.6g}, λ₂ {ref['second']:.6g} (λ₂/λ₁ "
              f"{ref['second'] / ref['eigenvalue']:.3f}), residual bound {ref['residual']:.1e}")
        if res["same_hessian"]:
            print(f"{res['state']}: same Hessian on both sides — one HVP differs by "
                  f"{res['same_hessian']['hvp_relative_difference']:.1e}; PyHessian's vᵀHv at absa's top eigenvector "
                  f"differs from the reference by {res['same_hessian']['rayleigh_relative_difference']:.1e}")
    print(f"\nTop eigenvalue to relative error ≤ {args.target:g} ({args.seeds} seeds each):\n")
    print(eigen_table(results, args.target))
    print("\n" + oracle_table(results))
    print("\nTrace and density (" f"{args.aux_repeats} repeats):\n")
    print(aux_table(results, args))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
