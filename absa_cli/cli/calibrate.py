"""``absa calibrate``: a step-time profile (decide/throughput.py), measured or read from a finished run.

``absa calibrate PRESET [KEY=VALUE ...] [--max-gpus N]`` starts the preset's worker group as ``absa train`` would
and times a few chunks of optimizer steps (the median chunk counts) at three per-worker batches (a quarter, half
and all of ``batch.per_worker_max``) on one worker and on ``--max-gpus`` workers (and two, in between), one
evaluation, a curvature probe (after the timed steps and a first probe, as most of a run's are), one checkpoint and
the group's start; then fits the model and writes the profile. About a minute for the quickstart here.

``absa calibrate --from-run RUN`` fits the same model from a run's epoch records (their ``step_s`` per geometry,
``eval_s``, ``probe_s``) and its wall time.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from absa_cli.cli.common import (check_sample_log, check_schedule, complete_preset, complete_run_id, held_interrupt,
                                  interrupted, load_libraries, user_errors)
from absa_cli.errors import counted, duration, missing_folder

WARMUP = 6  # optimizer steps per point before timing (allocations, caches: the first ones are slower) ...
CHUNKS, STEPS = 3, 2  # ... then this many chunks of this many steps, of which the median chunk counts


def calibrate(
    preset: Annotated[Optional[str], typer.Argument(help="Preset recipe to time (see `absa presets list`).",
                                                    autocompletion=complete_preset, show_default=False)] = None,
    overrides: Annotated[Optional[list[str]], typer.Argument(help="KEY=VALUE config overrides.",
                                                             show_default=False)] = None,
    max_gpus: Annotated[Optional[int], typer.Option("--max-gpus", min=1, help="Time up to this many workers.",
                                                    show_default="the preset's cluster.max_workers")] = None,
    from_run: Annotated[Optional[str], typer.Option("--from-run", help="Fit the profile from this run's records "
                                                    "instead of timing anything.",
                                                    autocompletion=complete_run_id)] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Where to write the profile.",
                                                   show_default="PRESET.profile.json")] = None,
    address: Annotated[Optional[str], typer.Option("--address", help="Ray cluster to time on (default: "
                                                   "$RAY_ADDRESS, else a local one).")] = None,
    local: Annotated[bool, typer.Option("--local", help="Time one worker in this process, without Ray.")] = False,
    runs_dir: Annotated[Optional[Path], typer.Option(
        "--runs-dir", help="Where run directories are (with --from-run; default: $ABSA_RUNS_DIR, else "
                           "./runs).")] = None,
) -> None:
    """Measure a step-time profile for `absa plan --profile` and `cluster.profile` (under a minute), or fit one from
    a finished run (--from-run)."""
    from absa_cli.cli.train import refuse_local_with_address
    from absa_cli.errors import UserError
    from absa_cli.run import profile as profiles

    with user_errors(), interrupted("interrupted; no profile was written"):
        if (preset is None) == (from_run is None):
            both = " (not both)" if preset is not None else ""
            raise UserError(f"give a preset to time, or --from-run RUN to fit a run's records{both}")
        timing = [name for name, given in (("--local", local), ("--address", address is not None),
                                           ("--max-gpus", max_gpus is not None), ("KEY=VALUE", bool(overrides)))
                  if given]
        if from_run is not None and timing:
            raise UserError(f"--from-run fits a run's records and times nothing, so {', '.join(timing)} would be "
                            f"ignored; drop it, or time a preset instead")
        refuse_local_with_address(local, address)
        path = output or Path(f"{from_run or preset}.profile.json")
        if not path.parent.is_dir():  # before a minute of measuring, not after
            raise UserError(f"cannot write the profile to {path}: {missing_folder(path.parent)} or choose another "
                            f"--output")
        if from_run is not None:
            with held_interrupt():  # a run made before its workers counted its parameters: torch counts them
                model = profile_from_run(from_run, runs_dir)
        else:
            model = _measure(preset, overrides or [], max_gpus, address, local)
        try:
            profiles.save(model, path)
        except OSError as exc:
            raise UserError(f"cannot write the profile to {path} ({exc.strerror}); choose another --output") from None
    _report(model, path)


def _gradient_bytes(config, counted: int | None) -> int:
    """4 bytes per trained parameter (the gradient all-reduced in fp32): of the ``counted`` parameters the workers
    reported, else (a run made before they did) of the model built here (torch, no data)."""
    if counted:
        return 4 * counted
    from absa_cli import catalog
    from absa_cli.models import build_model

    spec = catalog.dataset_spec(config.data.name)
    model = build_model(config.model.name, spec.num_classes, spec.image_size, width=config.model.width)
    return 4 * sum(p.numel() for p in model.parameters())


def profile_from_run(run_id: str, runs_dir: Path | None) -> Any:
    from absa_cli import catalog
    from absa_cli.decide.policy import num_adversarial
    from absa_cli.decide.throughput import fit
    from absa_cli.errors import UserError
    from absa_cli.run.profile import timed_model
    from absa_cli.run.rundir import RunDir, runs_root

    run = RunDir.open(runs_root(runs_dir), run_id)
    config = run.load_config()
    epochs = run.records("epoch")
    if not epochs:
        raise UserError(f"run {run.id} has no epoch records yet; let it train an epoch, or time the preset with "
                        f"`absa calibrate {config.preset}`")
    test = config.data.test_size or catalog.dataset_spec(config.data.name).num_test
    probed = [r for r in epochs if r.get("eigenvalue") is not None]  # probe_s sums the probe and its rechecks
    num_probes = sum(1 + len(r.get("eigenvalue_rechecks") or []) for r in probed)
    measured = [r for r in epochs if r.get("eval_s")]
    eval_per_sample = (sum(r["eval_s"] * r["num_workers"] for r in measured) / (len(measured) * test)
                       if measured else 0.0)
    info = run.info()
    wall = info.get("wall_s")
    inside = sum(r["epoch_s"] for r in epochs)
    extra = [r["epoch_s"] - r.get("train_s", 0) - r.get("eval_s", 0) - r["probe_s"] for r in epochs]
    epoch_extra = sum(extra) / len(extra) + ((wall - inside) / len(epochs) if wall else 0.0)
    device = _devices(epochs, info.get("host", "?"))
    first = config.batch.global_batch_size  # each epoch's share of FGSM samples, from the fraction it trained
    timed = [{**g, "attacked": num_adversarial(r.get("adv_ratio", 0.0), first) / first}
             for r in epochs for g in r["geometries"]]
    gradient_bytes = _gradient_bytes(config, info.get("num_parameters"))
    probe_s = sum(r["probe_s"] for r in probed) / num_probes if probed else 0.0
    return fit(timed, timed_model(config), device, gradient_bytes, sources=[f"the records of run {run.id}"],
               eval_s_per_sample=eval_per_sample, probe_s=probe_s, epoch_s=max(epoch_extra, 0.0))


def _devices(epochs: list[dict[str, Any]], host: str) -> str:
    """The devices a run's epochs trained on, from their records; a run made before the records named them says so
    (this machine's kind would be a guess: the run may have trained on a cluster)."""
    named = sorted({device for record in epochs for device in record.get("devices", [])})
    if not named:
        return f"devices not recorded (a run made before absa named them), host {host}"
    return f"{' + '.join(named)}, host {host}"


def _measure(preset: str, overrides: list[str], max_gpus: int | None, address: str | None, local: bool) -> Any:
    from absa_cli import config as config_mod
    from absa_cli.cli.driver import make_group, private_network
    from absa_cli.cli.train import _apply_workers
    from absa_cli.decide.geometry import BatchGeometry
    from absa_cli.decide.throughput import PHASES, fit
    from absa_cli.driver.contract import GroupLost, Shortfall, WorkerFailure
    from absa_cli.errors import UserError
    from absa_cli.run import checkpoint
    from absa_cli.run.profile import timed_model

    config = config_mod.load(preset, overrides)
    _apply_workers(config, max_gpus, local)
    check_schedule(config)
    check_sample_log(config)
    private_network(config, address, local)
    load_libraries(ray=not local, dataset=config.data.name)
    group, where = make_group(config, address, local)
    typer.echo(where, err=True)
    most = config.cluster.max_workers
    counts = sorted({1, min(2, most), most})
    per_worker = config.batch.per_worker_max
    batches = sorted({max(per_worker // 4, 1), max(per_worker // 2, 1), per_worker})
    entries: list[dict[str, Any]] = []
    try:
        started = time.perf_counter()
        if isinstance(group.resize(1), Shortfall):
            raise UserError(f"calibrate: no worker could start ({group.describe_capacity()}); free a slot and run "
                            f"it again")
        start_s = time.perf_counter() - started
        group.probe(0)  # a run's first probe starts cold; later ones start from the last eigenvector (probe.warm),
        num_train, epoch = group.num_train_samples, 0  # after an epoch's training: the one timed below
        for workers in counts:
            if isinstance(group.resize(workers), Shortfall):
                typer.echo(f"calibrate: the cluster could not start {workers} workers; timed up to "
                           f"{group.num_workers}", err=True)
                break
            for b in batches:
                geometry = BatchGeometry(workers * b, workers, b, 1)
                fits = num_train // geometry.global_batch_size  # steps in one epoch at this batch
                if fits < 2:
                    continue
                group.train_chunk(epoch, 0, [config.optim.lr] * min(WARMUP, fits - 1), geometry)
                timed, position = [], min(WARMUP, fits - 1)
                for _ in range(CHUNKS):
                    steps = min(STEPS, fits - position)
                    if steps < 1:  # the epoch is used up: the next one, same order of business
                        epoch, position, steps = epoch + 1, 0, min(STEPS, fits)
                    timed.append(group.train_chunk(epoch, position * geometry.global_batch_size,
                                                   [config.optim.lr] * steps, geometry))
                    position += steps
                stats = sorted(timed, key=lambda chunk: chunk.seconds / chunk.steps)[len(timed) // 2]
                epoch += 1
                split = dict(zip(PHASES, stats.phase_s))
                split = {k: v / stats.steps for k, v in split.items()}
                total = stats.seconds / stats.steps
                entries.append({"num_workers": workers, "per_worker_batch_size": b, "grad_accum_steps": 1,
                                "steps": stats.steps, "step_s": {**split, "total": total,
                                                                 "other": max(total - sum(split.values()), 0.0)}})
                typer.echo(f"calibrate: {counted(workers, 'worker')} × {b}: {duration(total)} a step", err=True)
        devices, num_parameters = " + ".join(group.devices()), group.num_parameters()
        group.resize(1)
        mark = time.perf_counter()
        group.evaluate()
        eval_s = time.perf_counter() - mark
        mark = time.perf_counter()
        group.probe(1)
        probe_s = time.perf_counter() - mark
        mark = time.perf_counter()
        state = group.state_dict()
        with tempfile.TemporaryDirectory() as scratch:
            checkpoint.save(Path(scratch) / "timed.pt", state)
        checkpoint_s = time.perf_counter() - mark
    except (WorkerFailure, GroupLost) as lost:  # nothing to keep: the measurements of a broken group mislead
        raise UserError(f"calibrate: a worker was lost while timing ({lost}); nothing was written, run it again"
                        ) from None
    finally:
        group.close()
    from absa_cli import catalog

    test = config.data.test_size or catalog.dataset_spec(config.data.name).num_test
    command = f"absa calibrate {preset} {' '.join(overrides)} --max-gpus {most}".replace("  ", " ")
    return fit(entries, timed_model(config), devices, _gradient_bytes(config, num_parameters),
               sources=[f"{command} ({where})"],
               eval_s_per_sample=eval_s / test, probe_s=probe_s, epoch_s=checkpoint_s, start_s=start_s)


def _digits(value: float) -> str:
    """Three significant digits, never an exponent: 46.2, 1,234 (not 1.23e+03)."""
    return f"{value:.3g}" if abs(float(f"{value:.3g}")) < 1000 else f"{value:,.0f}"  # 999.6 rounds to 1,000


def _report(model, path: Path) -> None:
    bandwidth = "—" if model.allreduce_bandwidth == float("inf") else f"{_digits(model.allreduce_bandwidth / 1e9)} GB/s"
    typer.echo(f"profile: {path} ({model.describe()}; gradient {_digits(model.gradient_bytes / 1e6)} MB)")
    typer.echo(f"  per micro-batch of b samples: compute {duration(model.compute_s[0])} + "
               f"{duration(model.compute_s[1])}·b, data {duration(model.data_s[0])} + {duration(model.data_s[1])}·b")
    typer.echo(f"  all-reduce: {duration(model.allreduce_latency_s)} a hop, {bandwidth} a link; optimizer "
               f"{duration(model.optimizer_s)}, rest {duration(model.other_s)} a step")
    typer.echo(f"  per epoch: evaluation {duration(model.eval_s_per_sample)} a test sample, probe "
               f"{duration(model.probe_s)}, rest {duration(model.epoch_s)}; group start {duration(model.start_s)}")
    typer.echo(f"  use it: absa plan PRESET --profile {path}; absa train PRESET cluster.profile={path}")
