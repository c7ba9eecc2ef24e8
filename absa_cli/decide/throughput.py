"""How long a training step takes on a given geometry: a fitted step-time model (pure: no torch, no Ray).

absa's step is: for each of the ``k`` micro-batches of ``b`` samples on each of the ``n`` workers, wait for the data
and run forward and backward; then one all-reduce of the gradient; then the optimizer update. The all-reduce does
not overlap the backward (absa reduces once per step, after accumulation), so the phases add:

    T(n, b, k, s) = k · (d₀ + d₁·b) + k · (c₀ + c₁·b + F(s·b)) + A(n) + o + r
    F(m)          = 0 for m = 0, else c₀ + c₁·m        (FGSM: one more forward and backward, on the m attacked samples)
    A(n)          = 0 for n = 1, else 2(n−1)·α + 2(n−1)/n · S / β       (ring all-reduce of S gradient bytes)

with s the share of samples that are FGSM examples (``policy.attacked_share``: ABSA's early epochs) and 
β the intra-node link, or the inter-node one once the group spans more than ``node_workers`` workers.

``d`` and ``c`` are the data-wait and compute lines per micro-batch, ``α`` the latency of one ring hop, ``β`` the
bandwidth of one link, ``o`` the optimizer update and ``r`` the rest of a step (the chunk's statistics, the call).
``fit`` finds them by least squares from epoch records' ``step_s`` per geometry (docs/throughput.md); a profile file
holds them with the model, the device and the sources they came from.
"""

from __future__ import annotations

import math

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from absa_cli.config import ConfigError

PROFILE_FORMAT = 1
PHASES = ("data", "compute", "allreduce", "optimizer")  # a step's phases, as workers time them (worker/timing.py)


@dataclass(frozen=True)
class StepModel:
    model: str  # e.g. "resnet18 (width 1.0)": what was timed
    device: str  # e.g. "cpu", "NVIDIA H100 80GB HBM3"
    gradient_bytes: int  # S: the all-reduced gradient (4 bytes per parameter)
    compute_s: tuple[float, float]  # c₀, c₁: seconds per micro-batch = c₀ + c₁·b
    data_s: tuple[float, float] = (0.0, 0.0)  # d₀, d₁
    allreduce_latency_s: float = 0.0  # α
    allreduce_bandwidth: float = float("inf")  # β, bytes/s
    node_workers: int = 0  # workers per node (0: one node holds any group); beyond it the ring crosses nodes ...
    allreduce_bandwidth_inter: float = float("inf")  # ... at this β, bytes/s (the slowest link of the ring)
    optimizer_s: float = 0.0  # o
    other_s: float = 0.0  # r
    eval_s_per_sample: float = 0.0  # evaluation: seconds per test sample on one worker (n workers share the set)
    probe_s: float = 0.0  # one curvature probe, as the preset configures it
    epoch_s: float = 0.0  # per epoch besides steps, evaluation and probe: checkpoint, records, the driver's calls
    start_s: float = 0.0  # starting the group (workers import torch, build data and model) before the first step
    sources: tuple[str, ...] = field(default_factory=tuple)  # where each number came from

    def allreduce(self, workers: int) -> float:
        if workers <= 1:
            return 0.0
        crosses = 0 < self.node_workers < workers
        bandwidth = self.allreduce_bandwidth_inter if crosses else self.allreduce_bandwidth
        hops = 2 * (workers - 1)
        return hops * self.allreduce_latency_s + hops / workers * self.gradient_bytes / bandwidth

    def step_s(self, workers: int, per_worker_batch: int, accum: int = 1, attacked: float = 0.0) -> float:
        """One step; ``attacked``: the share of the samples that are FGSM examples (one more pass over them)."""
        per_micro = (self.data_s[0] + self.data_s[1] * per_worker_batch
                     + self.compute_s[0] + self.compute_s[1] * per_worker_batch)
        if attacked > 0:
            per_micro += self.compute_s[0] + self.compute_s[1] * attacked * per_worker_batch
        return accum * per_micro + self.allreduce(workers) + self.optimizer_s + self.other_s

    def describe(self) -> str:
        return f"the step-time model of {self.model} on {self.device}"

    def epoch_seconds(self, workers: int, per_worker_batch: int, accum: int, steps: int, test_samples: int,
                      probes: float, attacked: float = 0.0) -> float:
        """One epoch: its steps, the evaluation (sharded over the workers), its ``probes`` (0, 1, or 1 + the
        rechecks of ``policy.recheck``), the rest."""
        return (steps * self.step_s(workers, per_worker_batch, accum, attacked)
                + test_samples / workers * self.eval_s_per_sample + self.probe_s * probes + self.epoch_s)

    # ---------------------------------------------------------------------- as data (run/profile.py: the file)

    def to_dict(self) -> dict[str, Any]:
        data = {"format": PROFILE_FORMAT, **asdict(self)}
        for key in ("allreduce_bandwidth", "allreduce_bandwidth_inter"):  # JSON has no infinity: null
            data[key] = None if data[key] == float("inf") else data[key]
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "StepModel":
        """The model a profile's data describes; ``ConfigError`` naming ``where`` if it is not one."""
        if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
            raise ConfigError(f"{where} is not an absa profile (format {PROFILE_FORMAT}); make one with "
                              f"`absa calibrate PRESET`")
        try:
            bandwidth, inter = data["allreduce_bandwidth"], data.get("allreduce_bandwidth_inter")
            model = cls(model=str(data["model"]), device=str(data["device"]),
                       gradient_bytes=int(data["gradient_bytes"]), compute_s=_pair(data["compute_s"]),
                       data_s=_pair(data.get("data_s", (0.0, 0.0))),
                       allreduce_latency_s=float(data.get("allreduce_latency_s", 0.0)),
                       allreduce_bandwidth=float("inf") if bandwidth is None else float(bandwidth),
                       node_workers=int(data.get("node_workers", 0)),
                       allreduce_bandwidth_inter=float("inf") if inter is None else float(inter),
                       optimizer_s=float(data.get("optimizer_s", 0.0)), other_s=float(data.get("other_s", 0.0)),
                       eval_s_per_sample=float(data.get("eval_s_per_sample", 0.0)),
                       probe_s=float(data.get("probe_s", 0.0)), epoch_s=float(data.get("epoch_s", 0.0)),
                       start_s=float(data.get("start_s", 0.0)), sources=tuple(str(s) for s in data.get("sources", ())))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"the profile {where} is damaged ({exc!r}); make it again with `absa calibrate`"
                              ) from None
        impossible = model._impossible()
        if impossible:  # a zero bandwidth divided by zero mid-run; negative or NaN times printed nonsense plans
            raise ConfigError(f"the profile {where} is damaged ({impossible}, which no timing gives); make it "
                              f"again with `absa calibrate`")
        return model

    def _impossible(self) -> str | None:
        """The first value no measurement gives: a time or a size that is negative or not finite, a bandwidth
        that is not positive (infinite, null in the file, stands for no communication timed)."""
        for name in ("allreduce_bandwidth", "allreduce_bandwidth_inter"):
            value = getattr(self, name)
            if not value > 0:  # NaN too
                return f"{name} is {value}"
        times = {"compute_s": self.compute_s, "data_s": self.data_s}
        times.update((name, (getattr(self, name),)) for name in (
            "allreduce_latency_s", "optimizer_s", "other_s", "eval_s_per_sample", "probe_s", "epoch_s", "start_s",
            "gradient_bytes", "node_workers"))
        for name, values in times.items():
            if not all(math.isfinite(v) and v >= 0 for v in values):
                return f"{name} is {list(values) if len(values) > 1 else values[0]}"
        return None


def _pair(value: Any) -> tuple[float, float]:
    first, second = value
    return float(first), float(second)


def _line(points: list[tuple[float, float, float]]) -> tuple[float, float]:
    """Weighted least-squares line y = a + c·x through (x, y, weight); a flat line through one x."""
    total = sum(w for _, _, w in points)
    if total <= 0:
        return 0.0, 0.0
    mean_x = sum(x * w for x, _, w in points) / total
    mean_y = sum(y * w for _, y, w in points) / total
    spread = sum(w * (x - mean_x) ** 2 for x, _, w in points)
    if spread <= 1e-12:  # one per-worker batch only: all of it is the slope through the origin
        return 0.0, mean_y / mean_x if mean_x else 0.0
    slope = sum(w * (x - mean_x) * (y - mean_y) for x, y, w in points) / spread
    if mean_y - slope * mean_x < 0 or slope < 0:  # a negative fixed or per-sample cost is noise (a loaded machine
        # timed the small batch slow): the line through the origin instead
        return 0.0, sum(w * x * y for x, y, w in points) / sum(w * x * x for x, _, w in points)
    return mean_y - slope * mean_x, slope


def fit(geometries: Iterable[dict[str, Any]], model: str, device: str, gradient_bytes: int,
        sources: Iterable[str] = (), **epoch_terms: float) -> StepModel:
    """The model from timed geometries (entries of epoch records' ``geometries`` with a ``step_s``, and the share
    of FGSM samples they trained, ``attacked``, where not 0); ``epoch_terms``: ``eval_s_per_sample``, ``probe_s``,
    ``epoch_s``, ``start_s`` where they were measured."""
    timed = [g for g in geometries if g.get("step_s") and g.get("steps")]
    if not timed:
        raise ConfigError("no timed training steps to fit a step-time model to (the records predate step timing, "
                          "or no chunk completed); time some with `absa calibrate PRESET`")
    compute, data, hops = [], [], []
    optimizer = other = weight = 0.0
    for g in timed:
        split, steps, k, b = g["step_s"], g["steps"], g["grad_accum_steps"], g["per_worker_batch_size"]
        attacked = g.get("attacked", 0.0)  # the FGSM pass is in the compute phase: F(s·b) of the model
        compute.append((1 + (attacked > 0), b * (1 + attacked), split["compute"] / k, steps))
        data.append((b, split["data"] / k, steps))
        if g["num_workers"] > 1:
            n = g["num_workers"]
            hops.append((2 * (n - 1), 2 * (n - 1) / n * gradient_bytes, split["allreduce"], steps))
        optimizer += split["optimizer"] * steps
        other += split["other"] * steps
        weight += steps
    latency, bandwidth = _ring(hops)
    return StepModel(model=model, device=device, gradient_bytes=gradient_bytes, compute_s=_compute_line(compute),
                     data_s=_line(data), allreduce_latency_s=latency, allreduce_bandwidth=bandwidth,
                     optimizer_s=optimizer / weight, other_s=other / weight, sources=tuple(sources), **epoch_terms)


def _compute_line(points: list[tuple[float, float, float, float]]) -> tuple[float, float]:
    """(c₀, c₁) from micro-batch compute times y = c₀·u + c₁·v (u: passes, 1 or 2 with FGSM; v: samples through
    them, b·(1 + s); weight w). Without FGSM (u = 1 throughout) it is ``_line``; with it, weighted least squares in
    two unknowns, through the origin if that gives a negative cost."""
    if all(u == 1 for u, _, _, _ in points):
        return _line([(v, y, w) for _, v, y, w in points])
    solved = _least_squares_2(points)
    if solved is not None and solved[0] >= 0 and solved[1] >= 0:
        return solved
    s_vv = sum(w * v * v for _, v, _, w in points)
    return 0.0, sum(w * v * y for _, v, y, w in points) / s_vv if s_vv else 0.0


def _least_squares_2(points: list[tuple[float, float, float, float]]) -> tuple[float, float] | None:
    """(a, b) minimising Σ w·(y − a·x₁ − b·x₂)² over points (x₁, x₂, y, w); None when x₁ and x₂ cannot be told
    apart (collinear)."""
    s11 = sum(w * x1 * x1 for x1, _, _, w in points)
    s12 = sum(w * x1 * x2 for x1, x2, _, w in points)
    s22 = sum(w * x2 * x2 for _, x2, _, w in points)
    t1 = sum(w * x1 * y for x1, _, y, w in points)
    t2 = sum(w * x2 * y for _, x2, y, w in points)
    det = s11 * s22 - s12 * s12
    if det <= 1e-12 * s11 * s22:
        return None
    return (t1 * s22 - t2 * s12) / det, (s11 * t2 - s12 * t1) / det


def _ring(hops: list[tuple[float, float, float, float]]) -> tuple[float, float]:
    """α and β from all-reduce times (hops 2(n−1), bytes 2(n−1)/n·S, seconds, weight). With one worker count the
    two cannot be told apart: all of it is charged to bandwidth (α = 0), which is right for large gradients."""
    if not hops:
        return 0.0, float("inf")
    counts = {h for h, _, _, _ in hops}
    if len(counts) == 1:
        seconds = sum(t * w for _, _, t, w in hops) / sum(w for *_, w in hops)
        bytes_moved = hops[0][1]
        return 0.0, bytes_moved / seconds if seconds > 0 else float("inf")
    alpha, inverse = _least_squares_2(hops) or (0.0, 0.0)  # t = α·hops + bytes/β
    return max(alpha, 0.0), 1.0 / max(inverse, 1e-30)


def fastest_workers(model: StepModel, global_batch_size: int, max_workers: int, per_worker_max: int,
                    plan: Any) -> tuple[int, dict[int, float]]:
    """The worker count (≤ ``max_workers``) whose geometry the model predicts fastest for ``global_batch_size``
    (ties: fewer workers), and each candidate's predicted step seconds. ``plan``: ``BatchGeometry.plan``."""
    predicted: dict[int, float] = {}
    for available in range(1, min(max_workers, global_batch_size) + 1):  # more workers than samples: same geometry
        geometry = plan(global_batch_size, max_workers, per_worker_max, available_workers=available)
        if geometry.num_workers not in predicted:
            predicted[geometry.num_workers] = model.step_s(geometry.num_workers, geometry.per_worker_batch_size,
                                                           geometry.grad_accum_steps)
    best = min(predicted, key=lambda n: (round(predicted[n], 12), n))
    return best, predicted
