"""``absa hessian CHECKPOINT``: top eigenvalues, trace, per-layer trace and eigenvalue density of a saved model."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from absa_cli.cli.common import (complete_preset, held_for_ray, held_interrupt, interrupted, report_console,
                                  user_errors)


class Method(str, Enum):
    lanczos = "lanczos"
    power = "power"


class BNMode(str, Enum):
    eval = "eval"
    train = "train"


def hessian(
    checkpoint: Annotated[Path, typer.Argument(
        help="A .pt file from a run's checkpoints/ folder, or a run directory (or its checkpoints/ folder) for its "
             "newest good checkpoint.")],
    overrides: Annotated[Optional[list[str]], typer.Argument(
        help="KEY=VALUE changes to the config the model and data are rebuilt from, e.g. data.root=/data (a key of the "
             "recipe the checkpoint records must agree with it); with --preset, for a checkpoint that records no "
             "recipe, the overrides it was trained with.", show_default=False)] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="How many top eigenvalues.")] = 1,
    method: Annotated[Method, typer.Option(help="lanczos (top-k, fewer HVPs) or power (top-1, the paper's).")] =
    Method.lanczos,
    trace: Annotated[bool, typer.Option("--trace", help="Hutchinson trace with its standard error.")] = False,
    density: Annotated[bool, typer.Option("--density", help="Eigenvalue density (stochastic Lanczos quadrature).")] =
    False,
    per_layer: Annotated[bool, typer.Option("--per-layer", help="Trace per layer (implies --trace).")] = False,
    plot: Annotated[Optional[Path], typer.Option(
        "--plot", help="Write an image of the density: .png, .pdf, .svg, .jpg, ... (implies --density).")] =
    None,
    as_json: Annotated[bool, typer.Option("--json", help="Print exactly one JSON object.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Samples per probe batch.")] = 128,
    num_batches: Annotated[int, typer.Option("--num-batches", min=1, help="Probe batches (HVPs average).")] = 1,
    bn_mode: Annotated[BNMode, typer.Option("--bn-mode", help="BatchNorm during HVPs: running stats or batch.")] =
    BNMode.eval,
    seed: Annotated[int, typer.Option("--seed", help="Probe samples and random vectors.")] = 0,
    trace_samples: Annotated[int, typer.Option("--trace-samples", min=2, help="Hutchinson probes (HVPs).")] = 50,
    density_steps: Annotated[int, typer.Option("--density-steps", min=2,
                                               help="Lanczos steps per density run (3 runs).")] = 40,
    max_iter: Annotated[int, typer.Option("--max-iter", min=1, help="Most Lanczos/power iterations.")] = 100,
    tol: Annotated[float, typer.Option("--tol", min=0.0, help="Relative tolerance of the eigenvalues.")] = 1e-4,
    max_gpus: Annotated[int, typer.Option(
        "--max-gpus", min=1, help="Shard the probe batches over this many Ray workers (HVPs averaged over them).")] = 1,
    address: Annotated[Optional[str], typer.Option(
        "--address", help="Ray cluster for --max-gpus > 1 (default: $RAY_ADDRESS, else a local one).")] = None,
    preset: Annotated[Optional[str], typer.Option(
        "--preset", help="Rebuild model and data from this preset (and KEY=VALUE overrides) instead of the "
        "checkpoint's run config or preset; the recipe a checkpoint records still wins over it.",
        autocompletion=complete_preset)] = None,
) -> None:
    """Inspect the loss curvature of a checkpoint (model and data rebuilt from the recipe it records, over its run's
    config or its preset). CHECKPOINT may also be a run directory or its checkpoints/ folder: the newest good
    checkpoint there is read."""
    from absa_cli.errors import UserError

    with user_errors(), interrupted("interrupted; nothing was computed"):
        with held_interrupt():  # torch: loaded whole, whenever Ctrl-C comes
            from absa_cli.run import checkpoint as checkpoint_mod, plots
            from absa_cli.worker import hessian as hessian_mod
        options = hessian_mod.HessianOptions(
            top_k=top_k, method=method.value, max_iter=max_iter, tol=tol, trace=trace or per_layer,
            trace_samples=trace_samples, density_steps=density_steps, density=density or plot is not None,
            per_layer=per_layer, batch_size=batch_size, num_batches=num_batches, bn_mode=bn_mode.value, seed=seed)
        hessian_mod.check_options(options)
        if address is not None and max_gpus == 1:
            raise UserError("--address names a Ray cluster for --max-gpus > 1; one worker computes here: drop "
                            "--address, or pass --max-gpus N")
        if plot is not None:  # before the computation, which a plotting error must never lose
            plots.check_output(plot, "--plot", needs="--plot")
        checkpoint, found_in, skipped, state = _checkpoint_file(checkpoint)
        state = state or checkpoint_mod.load(checkpoint)
        config, source, fix = _config_for(checkpoint, state, preset, overrides or [])
        if max_gpus > 1:
            from absa_cli.cli.driver import private_network

            private_network(config, address, local=False)  # may re-run this command: nothing is said before it
        model = hessian_mod.rebuild_model(config, state, fix)  # checks that the weights fit, in one clear line
        max_iter_used = hessian_mod.check_against_model(options, model)
        for problem in skipped:
            typer.echo(problem if problem.startswith("checkpoint ") else f"checkpoint: {problem}", err=True)
        if found_in is not None:
            typer.echo(f"reading {checkpoint}, the newest good checkpoint in {found_in}", err=True)
        typer.echo(f"checkpoint of: {checkpoint_mod.owner_line(state)}", err=True)  # before the long part
        typer.echo(f"config: {source}", err=True)
        if max_iter_used != options.max_iter:
            typer.echo(f"note: --max-iter {options.max_iter} raised to {max_iter_used}: Lanczos needs --top-k + 2 "
                       f"iterations for {options.top_k} eigenvalues", err=True)
        if max_gpus > 1:
            hessian_mod.probe_batches(config, options)  # a missing dataset fails here, in one line
            result = _distributed(config, options, state, max_gpus, address)
        else:
            result = hessian_mod.analyse(model, hessian_mod.probe_batches(config, options), options)
    density_full = result.pop("_density_full", None)
    result["checkpoint"] = str(checkpoint)
    result["owner"] = checkpoint_mod.owner_line(state)
    owner = state.get("run") if isinstance(state.get("run"), dict) else {}
    result["run_id"], result["config_fingerprint"] = owner.get("id"), owner.get("fingerprint")
    result["config_source"] = source
    plot_error = None
    if plot is not None:  # checked before the computation; a failure now (a disk that fills) loses no number
        try:
            hessian_mod.plot_density({**result, "_density_full": density_full}, str(plot),
                                     f"{config.model.name} on {config.data.name}: {checkpoint.name}")
            result["plot"] = str(plot)
        except UserError as exc:
            plot_error = result["plot_error"] = str(exc)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        _print(result)
    _warn_unconverged(result)
    found = len(result["top_eigenvalues"])
    if found < options.top_k:  # single-vector Lanczos finds one copy of a repeated eigenvalue (a Hessian's zeros)
        typer.echo(f"note: --top-k {options.top_k} asks for {options.top_k:,} eigenvalues; {found:,} distinct ones "
                   f"were found before the Krylov space ran out: the rest repeat them (a repeated eigenvalue, such as "
                   f"the many zeros of a model's Hessian, is found once)", err=True)
    asked = options.batch_size * options.num_batches
    if result["num_samples"] < asked:  # the probe draws from the training set, which had fewer
        typer.echo(f"note: --batch-size {options.batch_size} × --num-batches {options.num_batches} asks for "
                   f"{asked:,} samples; the training set has {result['num_samples']:,}: all of them were used",
                   err=True)
    if plot_error is not None:  # after the numbers
        typer.echo(f"error: {plot_error}", err=True)
        raise typer.Exit(2)


def _config_for(checkpoint: Path, state: dict, preset: str | None, overrides: list[str]) -> tuple[Any, str, str]:
    """The config to rebuild the model and the probe data from, where it came from (said before the computation),
    and the fix to name if the weights do not fit it.

    The base is ``--preset``, else the run's config.yaml beside checkpoints/, else the preset the checkpoint names;
    then the command line's ``KEY=VALUE`` overrides (e.g. ``data.root=`` for data that moved). Where the checkpoint
    records its recipe (docs/runs.md, "Whose"), the recipe wins wherever the base differs: the weights fit, and the
    probe draws from the training set they were trained on (a data key changes no shape, so a preset alone would
    draw from another set without a word)."""
    from absa_cli import config as config_mod
    from absa_cli.errors import UserError, first_line

    owner = state.get("run") if isinstance(state.get("run"), dict) else {}
    recipe = owner.get("config") if isinstance(owner.get("config"), dict) else None
    trained = state.get("preset") if isinstance(state.get("preset"), str) and state.get("preset") else None
    saved = checkpoint.resolve().parent.parent / "config.yaml"
    fix = f"pass the preset and the KEY=VALUE overrides it was trained with: --preset {trained or 'NAME'} KEY=VALUE ..."
    base, damaged = None, ""  # the run's own config.yaml, read; or why it could not be
    if preset is None and checkpoint.resolve().parent.name == "checkpoints" and saved.is_file():
        try:
            base = config_mod.from_yaml(saved.read_text())
        except (UserError, OSError, UnicodeDecodeError) as exc:
            damaged = f"its run's {saved} cannot be read ({first_line(exc)})"
            if recipe is None or trained is None:
                raise UserError(f"{damaged}; restore it from a copy, or {fix}") from None
            damaged = f" ({damaged})"
    if preset is not None:
        config, source = config_mod.load(preset, overrides), " ".join([f"preset {preset}", *overrides])
    elif base is not None:
        config = config_mod.with_overrides(base, overrides, "its run's config")
        source = " ".join([f"its run's {saved}", *overrides])
    elif recipe is not None and trained is not None:
        if trained not in config_mod.preset_names():
            raise UserError(f"checkpoint {checkpoint} was trained with preset {trained!r}, which this absa does not "
                            f"have; pass a preset to build on (--preset NAME): the recipe it records wins over it")
        config, source = config_mod.load(trained, overrides), " ".join([f"preset {trained}", *overrides]) + damaged
    else:
        raise UserError(f"checkpoint {checkpoint} records no recipe (written before absa recorded one) and has no run "
                        f"config.yaml beside its checkpoints/ folder; {fix}")
    if recipe is None:
        return config, f"{source} (the checkpoint records no recipe to check it against)", fix
    _refuse_contradictions(checkpoint, config, recipe, overrides)
    config, changed = _with_recipe(checkpoint, config, recipe)
    shown = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
    source += f" + the checkpoint's recipe ({shown})" if changed else ", matching the checkpoint's recipe"
    return config, source, ("this absa builds another model from the recipe the checkpoint records; read it with "
                            "the absa version that trained it")


def _refuse_contradictions(checkpoint: Path, config, recipe: dict, overrides: list[str]) -> None:
    """One line for an override of a key the checkpoint's recipe records with another value: the recipe is used
    (the weights need it), so the override would be dropped without a word."""
    from absa_cli.config import identity
    from absa_cli.errors import UserError

    current = identity(config)
    for item in overrides:
        name = item.partition("=")[0].strip()
        for key, value in recipe.items():
            if (key == name or key.startswith(f"{name}.")) and current.get(key, str(value)) != str(value):
                raise UserError(f"{item} contradicts checkpoint {checkpoint}, which records {key}={value} (its "
                                f"recipe, used for the model and the probe data); drop {item}")


def _with_recipe(checkpoint: Path, config, recipe: dict) -> tuple[Any, list[str]]:
    """``config`` with the checkpoint's recipe (``config.identity`` strings) where they differ, and those keys as
    ``KEY=VALUE``. A key this absa does not know (a newer absa's) is left out, as ``identity_differences`` does."""
    from absa_cli import config as config_mod
    from absa_cli.errors import UserError, first_line

    current = config_mod.identity(config)
    changed = [f"{key}={value}" for key, value in recipe.items() if key in current and current[key] != str(value)]
    if not changed:
        return config, []
    try:  # each value read as an override's: "[8]" a list, "True" a bool
        rebuilt = config_mod.with_overrides(config, changed, "the base config")
    except UserError as exc:
        raise UserError(f"the recipe checkpoint {checkpoint} records does not make a config here ({first_line(exc)}); "
                        f"read it with the absa version that trained it") from None
    now = config_mod.identity(rebuilt)
    left = [f"{key}={value} (rebuilt: {now[key]})" for key, value in recipe.items()
            if key in now and now[key] != str(value)]
    if left:
        raise UserError(f"the recipe checkpoint {checkpoint} records cannot be rebuilt here: {left[0]}; read it "
                        f"with the absa version that trained it")
    return rebuilt, changed


def _checkpoint_file(path: Path) -> tuple[Path, Path | None, list[str], dict | None]:
    """``path`` itself, or for a run directory or a checkpoints/ folder the newest checkpoint that verifies, the
    directory it was found in, the newer ones skipped (their problems, said once the command is sure to run) and
    the state it holds (loaded to verify it); one line when there is none."""
    from absa_cli.run.checkpoint import CheckpointStore
    from absa_cli.errors import UserError

    if not path.is_dir():
        return path, None, [], None
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    skipped: list[str] = []
    found = CheckpointStore(folder).latest(report=skipped.append)
    if found is None:
        raise UserError(f"{path} is a directory with no checkpoint in it; pass a .pt file from a run's "
                        f"checkpoints/ folder, or a run directory that has one")
    return folder / found[0].file, path, skipped, found[1]


def _warn_unconverged(result: dict) -> None:
    flags = result.get("eigen_converged_each") or []
    missed = [rank for rank, ok in enumerate(flags, start=1) if not ok]
    if missed:
        names = ", ".join(f"λ_{rank}" for rank in missed)
        typer.echo(f"warning: {len(missed)} of {len(flags)} eigenvalues did not converge ({names}) in "
                   f"{result['iterations']} iterations; raise --max-iter or loosen --tol", err=True)


def _distributed(config, options, state: dict, num_workers: int, address: str | None) -> dict:
    """The same analysis on ``num_workers`` Ray workers, each holding a shard of every probe batch."""
    from absa_cli.cluster.group import RayWorkerGroup
    from absa_cli.cluster.runtime import connect

    connect(address, guard=held_for_ray())
    config.cluster.max_workers = num_workers
    group = RayWorkerGroup(config)
    try:
        group.start(num_workers)
        return group.hessian(options, state)
    finally:
        group.close()


def _print(result: dict) -> None:
    from rich.table import Table

    console = report_console()
    table = Table("quantity", "value", title=f"Hessian of the training loss: {result['checkpoint']}",
                  title_justify="left")
    table.add_row("checkpoint of", result["owner"])
    table.add_row("config", result["config_source"])
    flags = result.get("eigen_converged_each") or [True] * len(result["top_eigenvalues"])
    for rank, (value, ok) in enumerate(zip(result["top_eigenvalues"], flags), start=1):
        table.add_row(f"λ_{rank}", f"{value:.6g}" + ("" if ok else " (not converged)"))
    if result["trace"] is not None:
        table.add_row("trace", f"{result['trace']:.6g} ± {result['trace_std_error']:.2g}")
    for layer, value in (result.get("per_layer_trace") or {}).items():
        table.add_row(f"  trace {layer}", f"{value:.4g}")
    if "density" in result:
        table.add_row("density", f"{len(result['density']['grid'])} points, σ = {result['density']['sigma']:.3g}"
                      + (f" → {result['plot']}" if "plot" in result else ""))
    table.add_row("parameters / samples", f"{result['num_parameters']:,} / {result['num_samples']:,}")
    table.add_row("HVPs", str(result["hvp_count"]))
    table.add_row("seconds", f"{result['seconds']:.2f}")
    console.print(table)
