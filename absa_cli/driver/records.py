"""The records a run writes to ``metrics.jsonl`` (docs/metrics.md), built from what the controller measured."""

from __future__ import annotations

import dataclasses
from typing import Any

from absa_cli.decide.geometry import BatchGeometry
from absa_cli.decide.throughput import PHASES
from absa_cli.decide.policy import Decision


def epoch_record(epoch: int, progress: Any, num_train_samples: int, geometry: BatchGeometry, totals: Any,
                 evaluation: Any, probes: list[Any], trained: Decision, decided: Decision, resize_s: float,
                 epoch_s: float, train_s: float = 0.0, eval_s: float = 0.0,
                 devices: list[str] | None = None) -> dict[str, Any]:
    """The ``epoch`` record of ``epoch`` (1-based): trained under ``trained``, ``decided`` after it, by workers on
    ``devices`` (their kinds, at the epoch's end); ``probes``: the epoch's probe and its rechecks, or none."""
    record = {
        "kind": "epoch", "epoch": epoch, "updates": progress.updates, "samples_seen": progress.samples_seen,
        "dropped_samples": num_train_samples - progress.samples_seen,
        "global_batch_size": geometry.global_batch_size, "num_workers": geometry.num_workers,
        "grad_accum_steps": geometry.grad_accum_steps, "devices": list(devices or []),
        "geometries": [_timed(g) for g in totals.geometries],
        "step_s": _step_s(totals.geometries), "lr": totals.lr,
        "adv_ratio": trained.adv_ratio,
        "train_loss": totals.loss_sum / max(totals.samples, 1),
        "train_acc": totals.num_correct / max(totals.samples, 1),
        "test_loss": evaluation.loss, "test_acc": evaluation.accuracy,
        "eigenvalue": probes[0].eigenvalue if probes else None,
        "eigenvalue_rechecks": [p.eigenvalue for p in probes[1:]],
        "probe_hvps": sum(p.hvp_count for p in probes), "probe_s": sum(p.seconds for p in probes),
        "policy_reason": decided.reason, "growth": decided.growth, "growth_epochs_early": decided.epochs_early,
        "resize_s": resize_s, "epoch_s": epoch_s, "train_s": train_s, "eval_s": eval_s,
    }
    if evaluation.fgsm_accuracy is not None:
        record["test_acc_fgsm"] = evaluation.fgsm_accuracy
    return record


def _per_step(timed: dict[str, Any]) -> dict[str, float]:
    """Mean seconds per step of each phase, ``total`` (the chunk's wall time on the worker, per step) and ``other``
    (the rest: the chunk's closing all-reduce of statistics, the audit log, the call itself)."""
    steps = max(timed["steps"], 1)
    means = {phase: timed[phase] / steps for phase in PHASES}
    total = timed["wall_s"] / steps
    return {**means, "other": max(total - sum(means.values()), 0.0), "total": total}


def _timed(entry: dict[str, Any]) -> dict[str, Any]:
    """A geometry of the epoch as recorded: its shape and steps, and, where its chunks were timed, ``step_s``."""
    shown = {key: value for key, value in entry.items() if key != "timed"}
    if entry.get("timed"):
        shown["step_s"] = _per_step(entry["timed"])
    return shown


def _step_s(geometries: list[dict[str, Any]]) -> dict[str, float] | None:
    """The epoch's mean step split over every timed step (None when no chunk was timed)."""
    timed = [entry["timed"] for entry in geometries if entry.get("timed")]
    if not timed:
        return None
    summed = {key: sum(t[key] for t in timed) for key in ("steps", "wall_s", *PHASES)}
    return _per_step(summed)


def geometry_record(epoch: int, geometry: BatchGeometry, reason: str) -> dict[str, Any]:
    """Written at the start and at every change of geometry; ``reason``: the membership decision's."""
    return {"kind": "geometry", "epoch": epoch, **dataclasses.asdict(geometry), "reason": reason}


def same_geometry(record: dict[str, Any] | None, geometry: BatchGeometry) -> bool:
    shape = dataclasses.asdict(geometry)
    return record is not None and {key: record.get(key) for key in shape} == shape


def event_record(kind: str, progress: Any, **fields: Any) -> dict[str, Any]:
    """A ``resume`` or ``restart`` record: where training continues from, and ``fields``."""
    return {"kind": kind, "epoch": progress.epoch + 1, "samples_seen": progress.samples_seen,
            "updates": progress.updates, **fields}
