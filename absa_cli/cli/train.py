"""``absa train PRESET [KEY=VALUE ...]`` and ``absa resume RUN_ID``: start a run, or continue one exactly."""

from __future__ import annotations

import os
import re
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Optional

import typer

from absa_cli.cli.common import (check_sample_log, check_schedule, check_splits, complete_preset, complete_run_id,
                                  interrupted, load_libraries, user_errors)

MAX_GPUS_HELP = ("Most workers the run may grow to: one per GPU, or one per CPU slot on a cluster without GPUs "
                 "(so on a laptop --max-gpus bounds CPU workers).")
ADDRESS_HELP = "Ray cluster to join (default: $RAY_ADDRESS, else start a local one on this machine)."
LOCAL_HELP = "Train in this process, without Ray (debugging)."
RUNS_DIR_HELP = "Where run directories are (default: $ABSA_RUNS_DIR, else ./runs)."
BEFORE_TRAINING = "interrupted before training started; nothing to save"
SUBMIT_HELP = ("Run the driver on the cluster as a Ray job (needs --address http://HEAD:8265, the dashboard's "
               "address, and absa's `cluster` extra); prints the job id and how to follow, stop and resume it. "
               "--runs-dir is then a path on the head node (default: its $ABSA_RUNS_DIR, else ~/absa-runs).")


def train(
    preset: Annotated[str, typer.Argument(help="Preset recipe (see `absa presets list`).",
                                          autocompletion=complete_preset)],
    overrides: Annotated[Optional[list[str]], typer.Argument(
        help="KEY=VALUE config overrides, e.g. epochs=5 optim.lr=0.05.", show_default=False)] = None,
    max_gpus: Annotated[Optional[int], typer.Option("--max-gpus", min=1, help=MAX_GPUS_HELP,
                                                    show_default="the preset's cluster.max_workers")] = None,
    address: Annotated[Optional[str], typer.Option("--address", help=ADDRESS_HELP)] = None,
    local: Annotated[bool, typer.Option("--local", help=LOCAL_HELP)] = False,
    runs_dir: Annotated[Optional[Path], typer.Option("--runs-dir", help=RUNS_DIR_HELP)] = None,
    submit: Annotated[bool, typer.Option("--submit", help=SUBMIT_HELP)] = False,
    run_id: Annotated[Optional[str], typer.Option("--run-id", hidden=True)] = None,  # set by --submit
) -> None:
    """Train a preset on a Ray worker group that grows with the batch: prints `run: <run-id>` first and a summary
    last. Ctrl-C stops after the current step with a checkpoint; `absa resume <run-id>` continues."""
    from absa_cli import config as config_mod
    from absa_cli.cli.driver import drive, make_group, private_network
    from absa_cli.decide.schedule import schedule_notes
    from absa_cli.run.rundir import RunDir, check_run_id, check_writable, new_run_id, runs_root

    with user_errors(), interrupted(BEFORE_TRAINING):
        refuse_local_with_address(local, address)
        config = config_mod.load(preset, overrides or [])
        most = max_gpus or config.cluster.max_workers  # --local's one worker is the command's; the run's: _saved
        _apply_workers(config, max_gpus, local)
        check_schedule(config)
        if run_id is not None:
            check_run_id(run_id)
        if not submit:  # --submit: the runs directory (and any sample log) is on the head node
            check_writable(runs_root(runs_dir))
            check_sample_log(config)
        if submit:
            _refuse_local(local)
            new_id = run_id or new_run_id(config.preset)
            argv = ["train", preset, *(overrides or []), "--run-id", new_id, *_max_gpus_args(max_gpus)]
            _submitted(address, argv, new_id, runs_dir, config.preset, submission_id=f"absa-{new_id}")
            return
        private_network(config, address, local)  # may re-run this command in a private network namespace
        run_id = run_id or new_run_id(config.preset or "run")  # drawn now: the Ray job carries it
        load_libraries(ray=not local, dataset=config.data.name)  # after the re-run, if any: it would load twice
        group, where = make_group(config, address, local, run_id)
        run, lock = RunDir.create_held(runs_root(runs_dir), _saved(config, most) if local else config, run_id=run_id)
        run.write_info(local=local)  # a resume without --local says what that changes
    typer.echo(f"run: {run.id}")
    for note in schedule_notes(config.optim, config.epochs):  # once the run exists: an error stays one line
        typer.echo(note, err=True)
    drive(config, run, group, lock, where, resume=False, local=local)


def resume(
    run_id: Annotated[str, typer.Argument(help="The run to continue (see `absa runs list`).",
                                          autocompletion=complete_run_id)],
    overrides: Annotated[Optional[list[str]], typer.Argument(
        help="KEY=VALUE changes outside the run's recipe, kept in its config.yaml, e.g. "
             "policy.stop_on_collapse=false cluster.collective_timeout_s=120.", show_default=False)] = None,
    max_gpus: Annotated[Optional[int], typer.Option(
        "--max-gpus", min=1, help=MAX_GPUS_HELP + " The global batch and LR come from the run's policy state, "
        "so any worker count continues the same run.", show_default="the run's cluster.max_workers")] = None,
    address: Annotated[Optional[str], typer.Option("--address", help=ADDRESS_HELP)] = None,
    local: Annotated[bool, typer.Option("--local", help=LOCAL_HELP)] = False,
    runs_dir: Annotated[Optional[Path], typer.Option("--runs-dir", help=RUNS_DIR_HELP)] = None,
    submit: Annotated[bool, typer.Option("--submit", help=SUBMIT_HELP)] = False,
) -> None:
    """Continue an interrupted, failed or killed run exactly where its newest good checkpoint stands."""
    from absa_cli import config as config_mod
    from absa_cli.cli.driver import drive, make_group, private_network, resume_command
    from absa_cli.config import ConfigError
    from absa_cli.run.rundir import RunDir, Status, check_run_id, check_writable, runs_root

    if submit:  # the run directory is on the cluster: the job's `absa resume` checks it there
        with user_errors():
            _refuse_local(local)
            check_run_id(run_id)
            _submitted(address, ["resume", run_id, *(overrides or []), *_max_gpus_args(max_gpus)], run_id, runs_dir,
                       preset_of(run_id), submission_id=f"absa-{run_id}-resume-{datetime.now():%Y%m%d-%H%M%S}",
                       resume_hint=False)
        return
    with user_errors(), interrupted(BEFORE_TRAINING):
        refuse_local_with_address(local, address)
        run = RunDir.open(runs_root(runs_dir), run_id)
        _refuse_finished(run)
        _refuse_damaged(run)
        check_writable(run.path, what="run directory")
        private_network(config_mod.resumed_with(run.load_config(), overrides or [], run.id), address, local)
        lock = run.lock().acquire()  # after the re-run in a private network, if any: it takes the lock itself
        try:
            info, saved = run.info(), run.config_path.read_text()
            _refuse_finished(run)  # again, under the lock: a driver may have finished it meanwhile
            config = config_mod.resumed_with(run.load_config(), overrides or [], run.id)
            changed = config_mod.to_yaml(config)  # to keep, as resumed (before this command's worker count)
            try:
                check_splits(run.load_config())  # as the run was saved
            except ConfigError as exc:  # a config this version refuses (checked since): resuming cannot help
                raise ConfigError(f"run {run.id} cannot continue with this version of absa ({exc}); start a new "
                                  f"run from its config, {run.config_path}") from None
            _apply_workers(config, max_gpus, local)  # this command's worker count (and the overrides') may not split
            check_schedule(config, fix="resume it with a smaller --max-gpus (every group size up to it must split "
                                       "the batch well)")
            check_sample_log(config, run)
            load_libraries(ray=not local, dataset=config.data.name, on_quit=lock.release)
            group, where = make_group(config, address, local, run.id, on_quit=lock.release)
        except BaseException:
            lock.release()
            raise
    if overrides:  # kept: the run goes on with them (a resume refused before it restored anything puts it back)
        run.save_config(changed)
    run.write_info(status=Status.RUNNING, host=socket.gethostname(), pid=os.getpid(), ended_at=None, error=None,
                   resumed_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   resumes=int(info.get("resumes") or 0) + 1, max_workers=config.cluster.max_workers, local=local)
    typer.echo(f"run: {run.id} (resumed)")
    if info.get("local") and not local:  # allowed (a run may move to a cluster), but not exact: said, not silent
        typer.echo(f"note: run {run.id} was trained with --local (one process, torch's default thread count); on "
                   f"Ray workers its steps sum in another order and its numbers drift from an uninterrupted run: "
                   f"`{resume_command(run, True)}` continues it exactly", err=True)
    if info.get("local") is False and local:  # the same, the other way round (a run from before the field: unsaid)
        typer.echo(f"note: run {run.id} last ran on Ray workers; in this process its steps run on one worker with "
                   f"torch's default thread count, sum in another order, and its numbers drift from an uninterrupted "
                   f"run: `{resume_command(run, False)}` continues it exactly", err=True)
    if lock.took_over:  # a driver that was killed, or lost with its machine: say whose place this one takes
        typer.echo(f"lock: took the run over from its last driver, {lock.took_over}", err=True)
    drive(config, run, group, lock, where, resume=True, local=local,
          undo=lambda: (run.replace_info(info), run.save_config(saved)))


def _refuse_local(local: bool) -> None:
    from absa_cli.errors import UserError

    if local:
        raise UserError("--submit runs the driver on a cluster and --local trains in this process; drop one")


def preset_of(run_id: str) -> str:
    """The preset of a run id absa drew (``PRESET-YYYYMMDD-HHMMSS-xxxx``), or "" (a job's metadata, where the run
    directory is on the cluster and cannot be read from here)."""
    match = re.fullmatch(r"(.+)-\d{8}-\d{6}-[0-9a-f]{4}", run_id)
    return match.group(1) if match else ""


def _max_gpus_args(max_gpus: int | None) -> list[str]:
    return [] if max_gpus is None else ["--max-gpus", str(max_gpus)]


def _submitted(address: str | None, argv: list[str], run_id: str, runs_dir: Path | None, preset: str,
               submission_id: str | None = None, resume_hint: bool = True) -> None:
    """Submit ``absa ARGV`` as a Ray job and say how to reach it."""
    from absa_cli.cluster import jobs

    submitted = jobs.submit(address or os.environ.get("RAY_ADDRESS"), argv, run_id,
                            None if runs_dir is None else str(runs_dir), preset, submission_id=submission_id)
    for line in submitted.lines(resume_hint=resume_hint):
        typer.echo(line)


def _refuse_finished(run) -> None:
    from absa_cli.errors import UserError
    from absa_cli.run.rundir import Status

    info = run.info()
    if info.get("status") == Status.FINISHED:
        raise UserError(f"run {run.id} already finished ({info.get('last_epoch')} of {info.get('epochs')} "
                        f"epochs); start a new one with `absa train {info.get('preset') or 'PRESET'}`")


def refuse_local_with_address(local: bool, address: str | None) -> None:
    """``--local`` (no Ray, this process) and ``--address`` (a Ray cluster) cannot both hold: refused, not guessed."""
    from absa_cli.errors import UserError

    if local and address is not None:
        raise UserError(f"--local trains in this process without Ray and --address {address} joins a Ray cluster; "
                        f"drop one")


def _refuse_damaged(run) -> None:
    """A run whose run.json or config.yaml is damaged is not continued: resuming would rewrite run.json without
    what it held (the run's uid, which its checkpoints name) or train a config that is not the run's."""
    from absa_cli.errors import UserError
    from absa_cli.run.rundir import unusable

    damage = run.damage()
    if damage:
        raise UserError(unusable(run.id, damage))


def _saved(config, most: int):
    """A ``--local`` run's config.yaml: its worker count the preset's (or ``--max-gpus``'), not ``--local``'s one
    worker, which is the command's, as a resume's ``--max-gpus`` is: resumed on a Ray cluster it grows as the preset
    says. Unless its batches split badly on that many workers: then the one it trains on, so that a plain resume is
    not refused."""
    from absa_cli import config as config_mod
    from absa_cli.config import ConfigError

    saved = config_mod.with_overrides(config, [f"cluster.max_workers={most}"], "--local")
    try:
        check_splits(saved)
    except ConfigError:
        return config
    return saved


def _apply_workers(config, max_gpus: int | None, local: bool) -> None:
    from absa_cli.config import ConfigError

    if max_gpus is not None:
        config.cluster.max_workers = max_gpus
    if local:
        if (max_gpus or 1) != 1:
            raise ConfigError("--local trains on one worker; drop --max-gpus or --local")
        config.cluster.max_workers = 1
