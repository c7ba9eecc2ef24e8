"""``absa plan PRESET [KEY=VALUE ...] [--max-gpus N] [--json]``: what a run will do, before it spends GPU hours.

A dry run: no torch, no data opened (the training-set size comes from the catalogue; ``--from-run`` of a run made
before its workers recorded ``num_parameters`` loads torch to count the model's). For the two bounding cases
of the ABS rule — growth at every probe from the first possible epoch, and growth only by the ``policy.duration``
fallback (bounds on the batch and the updates; with a profile, on the time too, each charging ``policy.recheck``
rechecks at every probe after the first) — it prints each batch phase (epochs, global batch, workers × per-worker
batch × accumulation, the LR of its first SGD step, its peak and its last, SGD updates, and why the policy set that
batch, λ_ref included) and the total update count beside the ``fixed`` small-batch baseline's. The LRs are the
policy's own (``decide/replay.py`` ``lr_in_state``), as the run asks it for each step: ``fixed-large``'s warm-up
starts from the unscaled ``optim.lr``, and after a growth with ``policy.lr_ramp_epochs`` the LR starts where it was.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from absa_cli.cli.common import check_schedule, complete_preset, report_console, user_errors
from absa_cli.errors import counted, duration


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
    runs_dir: Annotated[Optional[Path], typer.Option(
        "--runs-dir", help="Where run directories are (with --from-run; default: $ABSA_RUNS_DIR, else "
                           "./runs).")] = None,
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
            result = build_plan(config, config.cluster.max_workers, model, overrides or [])
        except ValueError as exc:  # an impossible geometry, e.g. per_worker_max against the cap
            raise UserError(f"cannot plan {preset}: {exc}") from None
    if as_json:
        typer.echo(json.dumps(result))
    else:
        _print(result)


def build_plan(config, max_workers: int, model: Any = None, overrides: list[str] | tuple[str, ...] = ()
               ) -> dict[str, Any]:
    """The plan as data (``--json``); ``overrides``: the command line's, for the command that profiles this config."""
    from absa_cli import catalog
    from absa_cli.decide.geometry import steps_in_epoch
    from absa_cli.decide.policy import check_batch_fits, training_set_notes, make_policy
    from absa_cli.decide.replay import schedule_bounds
    from absa_cli.decide.schedule import schedule_notes

    spec = catalog.dataset_spec(config.data.name)
    num_samples = spec.train_size(config.data.train_split, config.data.train_size)
    check_batch_fits(config, num_samples)
    bounds = schedule_bounds(config)
    base_updates = config.epochs * steps_in_epoch(num_samples, config.batch.global_batch_size)
    cases = {"fastest": _phases(config, bounds.fastest, bounds.fastest_growths, bounds.fastest_states, num_samples,
                                max_workers),
             "slowest": _phases(config, bounds.slowest, bounds.slowest_growths, bounds.slowest_states, num_samples,
                                max_workers)}
    return {
        "notes": [*schedule_notes(config.optim, config.epochs), *training_set_notes(config, num_samples)],
        "lr_ramp_epochs": config.policy.lr_ramp_epochs,
        "preset": config.preset, "policy": config.policy.name, "start": make_policy(config).initial().reason,
        "dataset": spec.name, "num_train_samples": num_samples, "epochs": config.epochs, "max_workers": max_workers,
        "cases": cases,
        "updates": {name: sum(p["updates"] for p in phases) for name, phases in cases.items()},
        "fixed_updates": base_updates,
        "time": None if model is None else _time(config, model, bounds, num_samples, spec, max_workers, overrides),
    }


def _time(config, model, bounds, num_samples: int, spec, max_workers: int,
          overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    from absa_cli.decide.timeline import time_cases

    test_samples = config.data.test_size or spec.num_test
    cases = time_cases(config, model, {"fastest": bounds.fastest, "slowest": bounds.slowest}, num_samples,
                       test_samples, max_workers)
    from absa_cli.run.profile import untimed_communication

    notes = [_profile_note(config, model, overrides), untimed_communication(model, max_workers, config.preset)]
    return {"profile": model.describe(), "sources": list(model.sources), "cases": cases,
            "note": "\n".join(note for note in notes if note) or None}  # a line each


def _profile_note(config, model, overrides: list[str] | tuple[str, ...]) -> str | None:
    """A note when the profile timed another model, width or dataset than ``config`` trains: its seconds are still
    shown (reusing a profile may be deliberate), but never silently. The advice profiles this config: the preset with
    the overrides that change what a step computes."""
    from absa_cli.run.profile import mismatch

    why = mismatch(model, config)
    if why is None:
        return None
    timed = [item for item in overrides if item.split("=", 1)[0].strip().startswith(("model.", "data."))]
    command = shlex.join(["absa", "calibrate", config.preset, *timed])
    return f"note: {why}: its wall times are estimates for another model; for this one make a profile with " \
           f"`{command}`"


def _phases(config, batches: list[int], growths: list[str | None], states: list[dict[str, Any]], num_samples: int,
            max_workers: int) -> list[dict[str, Any]]:
    """Runs of epochs at one batch; ``growth`` and ``why``: the cause of the growth that led to it, and the config
    fields behind it; ``lr`` and ``lr_last``: the LR of its first and last SGD step, from the policy in the state it
    holds then (``states``), at the epoch progress the driver gives it (the step's first sample over the training
    set; an epoch's tail that does not fill a batch is dropped)."""
    from absa_cli.decide.geometry import BatchGeometry, steps_in_epoch
    from absa_cli.decide.policy import make_policy
    from absa_cli.decide.replay import lr_in_state

    phases: list[dict[str, Any]] = []
    policy = config.policy
    # the baselines name the field their batch comes from (fixed-large: policy.max_global_batch); ABS starts at B₀
    start = getattr(make_policy(config), "batch_field", "batch.global_batch_size")
    why = {None: f"start ({start})",
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
                       "lr": lr_in_state(config, states[epoch - 1], epoch - 1), "lr_last": None,
                       "updates": steps_in_epoch(num_samples, batch), "growth": growth, "why": why[growth]})
    for phase in phases:  # per phase, not per epoch: a 100,000-epoch plan answers at once
        first, last, batch = phase["first_epoch"], phase["last_epoch"], phase["global_batch_size"]

        def last_step(epoch: int) -> float:  # the epoch progress of epoch ``epoch``'s (1-based) last step
            return epoch - 1 + (steps_in_epoch(num_samples, batch) - 1) * batch / num_samples

        phase["lr_last"] = lr_in_state(config, states[last - 1], last_step(last))
        # between step decays the LR only rises (a warm-up, a ramp after a growth) or stays: its peak is at the last
        # step before a decay inside the phase, or the phase's last
        before_decays = [lr_in_state(config, states[first - 1], last_step(decay))
                         for decay in config.optim.decay_epochs if first <= decay < last]
        phase["lr_peak"] = max([phase["lr"], phase["lr_last"], *before_decays])
    return phases


def _print(result: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = report_console()
    console.print(f"{result['preset']}: policy {result['policy']}, {result['dataset']} "
                  f"({result['num_train_samples']:,} training samples), {result['epochs']} epochs, "
                  f"up to {counted(result['max_workers'], 'worker')}")
    console.print(f"Epoch 1: {escape(result['start'])}")  # the run's own first line (fixed-large: its warm-up)
    titles = {"fastest": "growth at every probe (fastest)", "slowest": "growth only by policy.duration (slowest)"}
    for name, phases in result["cases"].items():
        table = Table("epochs", "global batch", "workers", "per worker", "accum", "LR first (→ peak) → last step",
                      "updates",
                      "why", title=titles[name], title_justify="left")
        table.columns[-1].overflow = "fold"  # a narrow terminal wraps the reason; it never cuts it
        for p in phases:
            span = f"{p['first_epoch']}" if p["first_epoch"] == p["last_epoch"] else \
                f"{p['first_epoch']}–{p['last_epoch']}"
            table.add_row(span, f"{p['global_batch_size']:,}", str(p["num_workers"]), str(p["per_worker_batch_size"]),
                          str(p["grad_accum_steps"]), _lrs(p), f"{p['updates']:,}", p["why"])
        console.print(table)
    if result["lr_ramp_epochs"] and any(p["growth"] for phases in result["cases"].values() for p in phases):
        console.print(f"After each growth the LR ramps from its value before the growth (the phase's first LR) to "
                      f"the new batch's over policy.lr_ramp_epochs={result['lr_ramp_epochs']:g} epochs.")
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
    if time["note"]:
        console.print(escape(time["note"]))
    fixed = time["cases"]["fixed"]["seconds"]
    table = Table("run", "wall time", "vs fixed", "worker-hours", f"held idle (of {max_workers})",
                  title=f"Time, from {escape(time['profile'])}", title_justify="left")
    for name, case in time["cases"].items():
        table.add_row(names[name], duration(case["seconds"]), _versus(fixed, case["seconds"]),
                      f"{case['worker_hours']:.3g}", f"{case['idle_worker_hours']:.3g}")
    console.print(table)
    for name, case in time["cases"].items():
        phases = "; ".join(f"{_span(p)}: {p['global_batch_size']:,} on {p['num_workers']} "
                           f"({duration(p['step_s'])} a step)" for p in case["phases"])
        console.print(f"  {names[name]}: {phases}")
    console.print(f"Profile sources: {escape('; '.join(time['sources']) or 'not recorded')}")


def _lrs(phase: dict[str, Any]) -> str:
    """``0.05 → 0.07512`` where the LR changes in the phase (warm-up, a ramp after a growth, step decay), else one;
    ``0.05 → 0.4 → 0.08`` where it peaks in between (a warm-up, then a decay)."""
    first, peak, last = (f"{phase[key]:.4g}" for key in ("lr", "lr_peak", "lr_last"))
    shown = [first] + ([peak] if peak not in (first, last) else []) + ([last] if last != first or peak != first else [])
    return " → ".join(shown)


def _versus(fixed_s: float, seconds: float) -> str:
    """``1.85× faster``, ``1.24× slower`` or ``the same``: never "0.81× faster" for a slower case."""
    ratio = fixed_s / seconds
    if round(ratio, 2) == 1:
        return "the same"
    return f"{ratio:.2f}× faster" if ratio > 1 else f"{1 / ratio:.2f}× slower"


def _span(phase: dict[str, Any]) -> str:
    first, last = phase["first_epoch"], phase["last_epoch"]
    return f"epoch {first}" if first == last else f"epochs {first}–{last}"
