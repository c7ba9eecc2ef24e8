"""``absa runs list|show``: the run registry under --runs-dir (no torch, no ray: instant)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from absa_cli.cli.common import complete_run_id, user_errors
from absa_cli.errors import counted
from absa_cli.run.metrics import fmt, loss_text

def _f(value: Any, spec: str = "") -> str:
    """A value from run.json or metrics.jsonl as a cell: formatted, its brackets escaped (a hand-edited ``"[/]"`` is
    text, not rich markup that would end the command with a MarkupError)."""
    from rich.markup import escape

    return escape(fmt(value, spec))


app = typer.Typer(help="List runs and show one in detail.", no_args_is_help=True)

RunsDir = Annotated[Optional[Path], typer.Option(
    "--runs-dir", help="Where run directories are (default: $ABSA_RUNS_DIR, else ./runs).")]


def _status(run) -> tuple[str, dict[str, Any] | None]:
    """The run's status, and for ``resuming`` the lock's holder (read once: the driver `runs show` names is the one
    the status was judged by). ``running`` only while a live driver holds the lock; a driver that died leaves
    ``running (driver gone)``. A run whose lock a live driver other than the one run.json names holds is ``resuming``:
    `absa resume` takes the lock first and writes itself into run.json only once Ray is up and its group made
    (starting a local cluster takes seconds). The driver run.json names holding the lock of a stopped run is a run
    just ending (the status is written before the lock is released)."""
    from absa_cli.run import lock
    from absa_cli.run.rundir import OTHER_VERSION

    info = run.info()
    status = info.get("status", "?")
    if status == "damaged":
        return status, None
    damage = run.damage()
    if damage:  # a config.yaml another absa version wrote is not damage: it just cannot continue here
        return "other absa version" if OTHER_VERSION in damage else "damaged", None
    holder = lock.read(run.lock_path)
    live = holder is not None and not lock.is_stale(holder)
    if live and holder["host"] is not None and (holder["host"], holder["pid"]) != (info.get("host"), info.get("pid")):
        return "resuming", holder  # (a lock file read() could not parse names no driver: judged by its age only)
    if status == "running" and not live:
        return "running (driver gone)", None
    return status, None


@app.command("list")
def list_runs(runs_dir: RunsDir = None) -> None:
    """One line per run, oldest first: status, progress, current batch and workers, best test accuracy."""
    from rich.console import Console
    from rich.table import Table

    from absa_cli.errors import UserError
    from absa_cli.run.rundir import list_runs as find_runs, runs_root

    root = runs_root(runs_dir)
    given = runs_dir is not None or bool(os.environ.get("ABSA_RUNS_DIR"))
    with user_errors():  # a folder named on purpose that is not there is a typo; a missing ./runs is a fresh machine
        if root.exists() and not root.is_dir():
            raise UserError(f"runs directory {root} is not a directory; pass the folder runs are in with "
                            f"--runs-dir (or set ABSA_RUNS_DIR)")
        if given and not root.exists():
            raise UserError(f"runs directory {root} does not exist; pass the folder runs are in with --runs-dir "
                            f"(or set ABSA_RUNS_DIR)")
    runs = find_runs(root)
    if not runs:
        typer.echo(f"no runs in {root}; start one with `absa train quickstart`")
        return
    table = Table("run", "preset", "status", "epoch", "batch", "workers", "best test acc", box=None,
                  pad_edge=False)
    for run in runs:
        info, (status, _) = run.info(), _status(run)
        table.add_row(run.id, _f(info.get("preset") or "-"), status, _progress(run, info, status),
                      *_geometry(run, info), _f(info.get("best_test_acc"), ".4f"))
    Console(width=200).print(table)


def _progress(run, info: dict[str, Any], status: str) -> str:
    """Epochs done of the run's epochs, and the samples into the next one its newest checkpoint holds when a stop
    wrote it mid-epoch (``0/4 +1,280 samples``: not nothing to resume from). Not for a run a live driver holds: a
    resume is past that checkpoint already, and its position is known only at the end of the epoch."""
    from absa_cli.run.checkpoint import CheckpointError, CheckpointStore

    done = info.get("last_epoch", 0)
    text = f"{_f(done)}/{_f(info.get('epochs'))}"
    if status in ("running", "resuming"):
        return text
    try:
        newest = (CheckpointStore(run.checkpoints_dir).entries() or [None])[-1]
    except (CheckpointError, OSError):  # `absa runs show` says what is wrong with it
        return text
    if newest is not None and newest.samples_seen and newest.epoch == done:
        text += f" +{newest.samples_seen:,} samples"
    return text


def _geometry(run, info: dict[str, Any]) -> tuple[str, str]:
    """The global batch and workers: run.json's, written after each epoch; before the first one ends (a run stopped
    mid-epoch 1, or starting), the newest geometry record's."""
    if info.get("global_batch_size") is None:
        try:
            formed = run.records("geometry")
        except OSError:  # not a file one can read: `absa runs show` says so
            formed = []
        if formed:
            return _f(formed[-1].get("global_batch_size")), _f(formed[-1].get("num_workers"))
    return _f(info.get("global_batch_size")), _f(info.get("num_workers"))


@app.command("show")
def show(run_id: Annotated[str, typer.Argument(help="A run id (see `absa runs list`).",
                                               autocompletion=complete_run_id)],
         runs_dir: RunsDir = None) -> None:
    """A run's config summary, batch and worker history, last metrics and checkpoints (each verified)."""
    from rich.console import Console

    from absa_cli.run.rundir import RunDir, runs_root

    with user_errors():
        run = RunDir.open(runs_root(runs_dir), run_id)
        info = run.info()
        records = run.records()
    console = Console(width=200, highlight=False)
    damage = run.damage()
    if damage:  # listed by `absa runs list`, so shown here: what is wrong, and what is left
        console.print(f"[bold]run[/] {run.id}  [bold]status[/] {_status(run)[0]}: {_f(damage)}")
        console.print(_history_table(records))
        console.print(_checkpoint_table(run))
        return
    config, (status, holder) = run.load_config(), _status(run)
    driver = f"pid {_f(info.get('pid'))} on {_f(info.get('host'))}"
    if holder is not None:  # resuming: the lock's holder drives it now; run.json still names the last driver
        driver = f"pid {_f(holder['pid'])} on {_f(holder['host'])} (before it: {driver})"
    console.print(f"[bold]run[/] {run.id}  [bold]status[/] {status}  [bold]driver[/] {driver}  [bold]started[/] "
                  f"{_f(info.get('started_at'))}  [bold]ended[/] {_f(info.get('ended_at') or '-')}  [bold]resumes[/] "
                  f"{_f(info.get('resumes', 0))}")
    if info.get("error"):
        console.print(f"[red]error[/]: {_f(info['error'])}")
    size = f"{config.data.train_size:,}" if config.data.train_size else "all"
    console.print(
        f"[bold]config[/] preset {config.preset}; data {config.data.name} ({size} train); "
        f"model {config.model.name} (width {config.model.width}); {counted(config.epochs, 'epoch')}; policy "
        f"{config.policy.name}; SGD lr {config.optim.lr} momentum {config.optim.momentum} weight decay "
        f"{config.optim.weight_decay}; batch {config.batch.global_batch_size} → at most "
        f"{config.policy.max_global_batch}; at most {counted(config.cluster.max_workers, 'worker')}")
    console.print(_history_table(records))
    epochs = [r for r in records if r.get("kind") == "epoch"]
    if epochs:
        last = epochs[-1]
        console.print(
            f"[bold]last epoch[/] {_f(last.get('epoch'))}: updates {_f(last.get('updates'))}, train loss "
            f"{_f(loss_text(last.get('train_loss'), 4))} acc {_f(last.get('train_acc'), '.4f')}, test acc "
            f"{_f(last.get('test_acc'), '.4f')}, λ_max {_f(last.get('eigenvalue'), '.4g')}, lr "
            f"{_f(last.get('lr'), '.4g')}, policy: {_f(last.get('policy_reason') or '-')}")
    console.print(_checkpoint_table(run))


def _history_table(records: list[dict[str, Any]]):
    from rich.table import Table

    table = Table("epoch", "event", "global batch", "workers × batch × accum", "detail", title="history",
                  title_justify="left", box=None, pad_edge=False)
    for r in records:  # a field missing from a hand-edited record shows as "-", not a traceback
        kind, f = r.get("kind"), lambda key, spec="": _f(r.get(key), spec)
        if kind == "geometry":
            table.add_row(f("epoch"), "geometry", f("global_batch_size"),
                          f"{f('num_workers')} × {f('per_worker_batch_size')} × {f('grad_accum_steps')}", "")
        elif kind == "resize":
            table.add_row(f("epoch"), "resize", "", f"{f('from_workers')} → {f('to_workers')}",
                          f"live in {f('resize_s', '.2f')} s")
        elif kind == "failure":
            table.add_row(f("epoch"), "failure", "", f"{f('from_workers')} → {f('to_workers')}",
                          f"lost {f('lost_workers')} at sample {f('samples_seen', ',')}: {f('error')}")
        elif kind in ("restart", "resume"):
            table.add_row(f("epoch"), kind, "", _f(r.get("num_workers") or r.get("max_workers") or ""),
                          f"from {_f(r.get('checkpoint') or 'the start')}")
    return table


def _checkpoint_table(run):
    from rich.table import Table

    from absa_cli.run.checkpoint import CheckpointError, CheckpointStore, verify

    table = Table("checkpoint", "epochs done", "+samples", "updates", "bytes", "written", "check",
                  title="checkpoints (newest last)", title_justify="left", box=None, pad_edge=False)
    store = CheckpointStore(run.checkpoints_dir)
    try:
        entries = store.entries()
    except CheckpointError as exc:
        table.add_row("-", "", "", "", "", "", _f(str(exc)))
        return table
    if not entries and store.unlisted() is not None:  # what resume refuses, said here too
        table.add_row("-", "", "", "", "", "", f"[red]{_f(str(store.unlisted()))}[/]")
    for entry in entries:
        try:
            verify(run.checkpoints_dir / entry.file, entry)
            check = "ok (sha256)"
        except CheckpointError as exc:
            check = f"[red]{_f(str(exc).removeprefix(f'checkpoint {entry.file} '))}[/]"
        table.add_row(entry.file, str(entry.epoch), f"{entry.samples_seen:,}", f"{entry.updates:,}",
                      f"{entry.bytes:,}", entry.written_at, check)
    return table
