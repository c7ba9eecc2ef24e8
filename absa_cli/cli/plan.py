"""``absa plan PRESET [KEY=VALUE ...] [--max-gpus N] [--json]``: what a run will do, before it spends GPU hours.

A dry run: no torch, no data opened (the training-set size comes from the catalogue). For the two bounding cases
of the ABS rule — growth at every probe from the first possible epoch, and growth only by the ``policy.duration``
fallback — it prints each batch phase (epochs, global batch, workers × per-worker batch × accumulation, LR at the
phase start, SGD updates, and why the policy set that batch, λ_ref included) and the total update count beside the
``fixed`` small-batch baseline's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from absa_cli.cli.common import check_schedule, complete_preset, user_errors


def plan(
    preset: Annotated[str, typer.Argument(help="Preset recipe (see `absa presets list`).",
                                          autocompletion=complete_preset)],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="KEY=VALUE config overrides.",
                                                             show_default=False)] = None,
    max_gpus: Annotated[Optional[int], typer.Option(
        "--max-gpus", min=1, help="Most workers the run may use (GPUs; CPU workers on a CPU cluster).",
        show_default="the preset's cluster.max_workers")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
    profile: Annotated[Optional[Path], typer.Option("--profile", help="A step-time profile (`absa calibrate`): "
                                                    "adds wall time and worker-hours.")] = None,
    from_run: Annotated[Optional[str], typer.Option("--from-run", help="Fit the step-time profile from this "
                                                    "run's records instead.")] = None,
    runs_dir: Annotated[Optional[Path], typer.Option("--runs-dir", help="Where run directories are.")] = None,
) -> None:
    """Dry-run a preset: batch phases, worker geometry, LR and SGD-update counts (no torch, no data); with a
    step-time profile, wall time and worker-hours beside the fixed and fixed-large baselines."""
    from absa_cli import config as config_mod
    from absa_cli.errors import UserError

    with user_errors():
        config = config_mod.load(preset, overrides or [])
        config.cluster.max_workers = max_gpus or config.cluster.max_workers
        check_schedule(config)
        if profile is not None and from_run is not None:
            raise UserError("give --profile FILE or --from-run RUN, not both")
        model = None
        if profile is not None:
            from absa_cli.run import profile as profiles

            model = profiles.load(profile)
        elif from_run is not None:
            from absa_cli.cli.calibrate import profile_from_run

            model = profile_from_run(from_run, runs_dir)
        try:
            result = build_plan(config, config.cluster.max_workers, model)
        except ValueError as exc:  # an impossible geometry, e.g. per_worker_max against the cap
            raise UserError(f"cannot plan {preset}: {exc}") from None
    if as_json:
        typer.echo(json.dumps(result))
    else:
        _print(result)


def build_plan(config, max_workers: int, model: Any = None) -> dict[str, Any]:
    from absa_cli import catalog
    from absa_cli.decide.geometry import steps_in_epoch
    from absa_cli.decide.policy import check_batch_fits, dropped_share_notes
    from absa_cli.decide.replay import schedule_bounds

    spec = catalog.dataset_spec(config.data.name)
    num_samples = spec.train_size(config.data.train_split, config.data.train_size)
    check_batch_fits(config, num_samples)
    bounds = schedule_bounds(config)
    base_updates = config.epochs * steps_in_epoch(num_samples, config.batch.global_batch_size)
    cases = {"fastest": _phases(config, bounds.fastest, bounds.fastest_growths, num_samples, max_workers),
             "slowest": _phases(config, bounds.slowest, bounds.slowest_growths, num_samples, max_workers)}
    return {
        "notes": dropped_share_notes(config, num_samples), "lr_ramp_epochs": config.policy.lr_ramp_epochs,
        "preset": config.preset, "policy": config.policy.name, "dataset": spec.name,
        "num_train_samples": num_samples, "epochs": config.epochs, "max_workers": max_workers,
        "cases": cases,
        "updates": {name: sum(p["updates"] for p in phases) for name, phases in cases.items()},
        "fixed_updates": base_updates,
        "time": None if model is None else _time(config, model, bounds, num_samples, spec, max_workers),
    }


def _time(config, model, bounds, num_samples: int, spec, max_workers: int) -> dict[str, Any]:
    from absa_cli.decide.timeline import time_cases

    test_samples = config.data.test_size or spec.num_test
    cases = time_cases(config, model, {"fastest": bounds.fastest, "slowest": bounds.slowest}, num_samples,
                       test_samples, max_workers)
    return {"profile": model.describe(), "sources": list(model.sources), "cases": cases}


def _phases(config, batches: list[int], growths: list[str | None], num_samples: int,
            max_workers: int) -> list[dict[str, Any]]:
    """Runs of epochs at one batch; ``growth`` and ``why``: the cause of the growth that led to it, and the config
    fields behind it."""
    from absa_cli.decide.geometry import BatchGeometry, steps_in_epoch
    from absa_cli.decide.schedule import lr_at

    phases: list[dict[str, Any]] = []
    policy = config.policy
    why = {None: "start (batch.global_batch_size)",
           "curvature": f"curvature: λ_max ≤ λ_ref / policy.eig_ratio={policy.eig_ratio:g}",
           "fallback": f"fallback: policy.duration={policy.duration}, λ_ref kept"}
    for epoch, (batch, growth) in enumerate(zip(batches, growths), start=1):
        if phases and phases[-1]["global_batch_size"] == batch:
            phases[-1]["last_epoch"] = epoch
            phases[-1]["updates"] += steps_in_epoch(num_samples, batch)
            continue
        geometry = BatchGeometry.plan(batch, max_workers, config.batch.per_worker_max)
        phases.append({"first_epoch": epoch, "last_epoch": epoch, "global_batch_size": batch,
                       "num_workers": geometry.num_workers, "per_worker_batch_size": geometry.per_worker_batch_size,
                       "grad_accum_steps": geometry.grad_accum_steps,
                       "lr": lr_at(config.optim, batch, epoch - 1), "updates": steps_in_epoch(num_samples, batch),
                       "growth": growth, "why": why[growth]})
    return phases


def _print(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    console.print(f"{result['preset']}: policy {result['policy']}, {result['dataset']} "
                  f"({result['num_train_samples']:,} training samples), {result['epochs']} epochs, "
                  f"up to {result['max_workers']} worker(s)")
    titles = {"fastest": "growth at every probe (fastest)", "slowest": "growth only by policy.duration (slowest)"}
    for name, phases in result["cases"].items():
        lr_title = "LR after ramp" if result["lr_ramp_epochs"] else "LR at start"
        table = Table("epochs", "global batch", "workers", "per worker", "accum", lr_title, "updates", "why",
                      title=titles[name], title_justify="left")
        for p in phases:
            span = f"{p['first_epoch']}" if p["first_epoch"] == p["last_epoch"] else \
                f"{p['first_epoch']}–{p['last_epoch']}"
            table.add_row(span, f"{p['global_batch_size']:,}", str(p["num_workers"]), str(p["per_worker_batch_size"]),
                          str(p["grad_accum_steps"]), f"{p['lr']:.4g}", f"{p['updates']:,}", p["why"])
        console.print(table)
    if result["lr_ramp_epochs"]:
        console.print(f"After each growth the LR ramps from its value before to the one shown over "
                      f"policy.lr_ramp_epochs={result['lr_ramp_epochs']:g} epochs.")
    for note in result["notes"]:
        console.print(note)
    fixed = result["fixed_updates"]
    for name, updates in result["updates"].items():
        console.print(f"SGD updates, {titles[name]}: {updates:,} ({fixed / max(updates, 1):.1f}× fewer than fixed)")
    console.print(f"SGD updates, fixed small-batch baseline: {fixed:,}")
    _print_time(console, result["time"], result["max_workers"])


def _print_time(console: Any, time: dict[str, Any] | None, max_workers: int) -> None:
    from rich.markup import escape
    from rich.table import Table

    if time is None:
        console.print("Wall time: give a step-time profile (--profile FILE, made by `absa calibrate PRESET`, or "
                      "--from-run RUN) to see seconds and worker-hours; none is guessed.")
        return
    names = {"fastest": "absa, growth at every probe", "slowest": "absa, growth by policy.duration",
             "fixed": "fixed, on its fastest worker count", "fixed-large": "fixed-large"}
    fixed = time["cases"]["fixed"]["seconds"]
    table = Table("run", "wall time", "vs fixed", "worker-hours", f"held idle (of {max_workers})",
                  title=f"Time, from {escape(time['profile'])}", title_justify="left")
    for name, case in time["cases"].items():
        table.add_row(names[name], _duration(case["seconds"]), _versus(fixed, case["seconds"]),
                      f"{case['worker_hours']:.3g}", f"{case['idle_worker_hours']:.3g}")
    console.print(table)
    for name, case in time["cases"].items():
        phases = "; ".join(f"{_span(p)}: {p['global_batch_size']:,} on {p['num_workers']} "
                           f"({_duration(p['step_s'])} a step)" for p in case["phases"])
        console.print(f"  {names[name]}: {phases}")
    console.print(f"Profile sources: {escape('; '.join(time['sources']) or 'not recorded')}")


def _versus(fixed_s: float, seconds: float) -> str:
    """``1.85× faster``, ``1.24× slower`` or ``the same``: never "0.81× faster" for a slower case."""
    ratio = fixed_s / seconds
    if round(ratio, 2) == 1:
        return "the same"
    return f"{ratio:.2f}× faster" if ratio > 1 else f"{1 / ratio:.2f}× slower"


def _span(phase: dict[str, Any]) -> str:
    first, last = phase["first_epoch"], phase["last_epoch"]
    return f"epoch {first}" if first == last else f"epochs {first}–{last}"


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.3g} ms"
    if seconds < 600:
        return f"{seconds:.3g} s"
    return f"{seconds / 3600:.3g} h" if seconds >= 7200 else f"{seconds / 60:.3g} min"
