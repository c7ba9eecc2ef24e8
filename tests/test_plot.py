"""`absa plot` and `absa_cli.run.plots`: the series that go into the figure, checked against hand-computed x/y from
synthetic run directories (written in the metrics.jsonl contract of docs/metrics.md); the PNG itself (magic bytes,
size); user errors as one line with exit code 2.
"""

from __future__ import annotations

import json
import os
import math
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from absa_cli import config as config_mod
from absa_cli.cli.app import app
from absa_cli.run import plots
from absa_cli.run.metrics import EPOCH_FIELDS

from conftest import assert_user_error, with_private_mounts

runner = CliRunner()
NUM_TRAIN = 8000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _epoch(epoch: int, updates: int, batch: int, workers: int, test_acc: float, eigenvalue: float | None) -> dict:
    record = {"kind": "epoch", "epoch": epoch, "updates": updates, "samples_seen": NUM_TRAIN, "dropped_samples": 0,
              "global_batch_size": batch, "num_workers": workers, "grad_accum_steps": max(1, batch // (128 * workers)),
              "lr": 0.05 * batch / 128, "train_loss": 2.0 / epoch, "train_acc": test_acc - 0.05,
              "test_loss": 1.8 / epoch, "test_acc": test_acc, "epoch_s": 10.0 + epoch, "adv_ratio": 0.2,
              "eigenvalue": eigenvalue, "eigenvalue_rechecks": [], "probe_hvps": 6 if eigenvalue else 0,
              "probe_s": 1.0 if eigenvalue else 0.0,
              "policy_reason": "batch kept", "growth": None, "growth_epochs_early": 0, "resize_s": 0.0,
              "step_s": None, "train_s": 9.0, "eval_s": 0.5}
    assert set(EPOCH_FIELDS) <= set(record)
    return record


def _write_run(root: Path, run_id: str, policy: str, batches: list[int], extra: list[tuple[int, dict]] = ()) -> Path:
    """A run of ``len(batches)`` epochs; ``extra`` inserts ``(after_epoch, record)`` lines, e.g. a resize."""
    run_dir = root / run_id
    run_dir.mkdir(parents=True)
    run_dir.joinpath("config.yaml").write_text(config_mod.to_yaml(config_mod.load("quickstart",
                                                                                   [f"policy.name={policy}"])))
    lines = [{"kind": "geometry", "epoch": 1, "global_batch_size": batches[0], "num_workers": 1,
              "per_worker_batch_size": batches[0], "grad_accum_steps": 1}]
    updates = 0
    for epoch, batch in enumerate(batches, start=1):
        updates += math.ceil(NUM_TRAIN / batch)
        workers = min(2, batch // 128)
        eigenvalue = 60.0 / epoch if policy != "fixed" else None
        lines.append(_epoch(epoch, updates, batch, workers, 0.3 + 0.1 * epoch, eigenvalue))
        lines += [record for after, record in extra if after == epoch]
    run_dir.joinpath("metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return run_dir


ABSA_BATCHES = [128, 128, 256, 256, 512]  # updates per epoch: 63, 63, 32, 32, 16
RESIZE = {"kind": "resize", "epoch": 3, "from_workers": 1, "to_workers": 2, "actor_start_s": 0.01,
          "rendezvous_s": 0.02, "state_transfer_s": 0.01, "first_step_s": 0.2, "resize_s": 0.04}
FAILURE = {"kind": "failure", "epoch": 4, "samples_seen": NUM_TRAIN // 2, "from_workers": 2, "lost_workers": 1,
           "replacements": 1, "to_workers": 2, "error": "ActorDiedError", "recovery_s": 3.0}


@pytest.fixture
def runs(tmp_path) -> Path:
    _write_run(tmp_path, "absa-run", "absa", ABSA_BATCHES, [(2, RESIZE), (3, FAILURE)])
    _write_run(tmp_path, "fixed-run", "fixed", [128] * 5)
    return tmp_path


def _assert_png(path: Path, width: int = 1430, height: int = 880) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert struct.unpack(">II", data[16:24]) == (width, height)  # the IHDR chunk: 13 × 8 inches at 110 dpi
    assert len(data) > 30_000  # four panels of curves, not an empty canvas


def test_series_by_updates_epoch_and_wall_time(runs):
    run = plots.load_run(runs / "absa-run")
    assert run.label == "absa-run (absa)"
    assert run.x("updates") == [63, 126, 158, 190, 206]
    assert run.x("epoch") == [1, 2, 3, 4, 5]
    assert run.x("time") == [11, 23, 36, 50, 65]  # cumulative epoch_s = 10 + epoch
    assert run.series("global_batch_size", "updates") == ([63, 126, 158, 190, 206], ABSA_BATCHES)
    assert run.series("num_workers", "epoch") == ([1, 2, 3, 4, 5], [1, 1, 2, 2, 2])
    assert run.summary() == "absa-run (absa): 206 updates, test acc 0.800 after epoch 5"


def test_unprobed_and_non_positive_values_are_left_out(tmp_path):
    run_dir = _write_run(tmp_path, "r", "absa", [128, 128, 128])
    lines = run_dir.joinpath("metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    records[1]["eigenvalue"], records[2]["eigenvalue"] = None, -0.5  # not probed; a negative power-iteration result
    run_dir.joinpath("metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    run = plots.load_run(run_dir)
    assert run.series("eigenvalue", "epoch", positive=True) == ([3], [20.0])
    assert run.series("eigenvalue", "epoch") == ([2, 3], [-0.5, 20.0])


def test_after_a_restart_the_last_record_of_each_epoch_wins(tmp_path):
    restart = {"kind": "restart", "epoch": 2, "checkpoint": "checkpoints/epoch-0001.pt", "num_workers": 1,
               "reason": "lost every worker"}
    redone = _epoch(2, 126, 128, 1, 0.55, 30.0)  # epoch 2 again, from the epoch-1 checkpoint
    run_dir = _write_run(tmp_path, "r", "absa", [128, 128, 128], [(2, restart), (2, redone)])
    run = plots.load_run(run_dir)
    assert [r["epoch"] for r in run.epochs] == [1, 2, 3]
    assert run.series("test_acc", "epoch") == ([1, 2, 3], [0.4, 0.55, 0.6000000000000001])
    assert [e["kind"] for e in run.events] == ["restart"]


def test_events_fall_at_their_epoch_start_or_inside_it(runs):
    run = plots.load_run(runs / "absa-run")
    resize, failure = run.events
    assert run.event_x(resize, "updates") == 126  # the resize applies from epoch 3: after epoch 2's last update
    assert run.event_x(failure, "updates") == 158 + 16  # half of epoch 4 (32 updates) done when it failed
    assert run.event_x(failure, "epoch") == 3.5


def test_label_without_a_readable_config_is_the_run_id(tmp_path):
    run_dir = _write_run(tmp_path, "r", "absa", [128])
    run_dir.joinpath("config.yaml").write_text("no_such_section: 1\n")
    assert plots.load_run(run_dir).label == "r"
    run_dir.joinpath("config.yaml").unlink()
    assert plots.load_run(run_dir).label == "r"


def test_a_half_written_last_line_is_skipped(tmp_path):
    run_dir = _write_run(tmp_path, "r", "absa", [128, 128])
    with run_dir.joinpath("metrics.jsonl").open("a") as handle:
        handle.write('{"kind": "epoch", "epo')  # a live run, caught mid-write
    assert plots.load_run(run_dir).x("epoch") == [1, 2]


def test_plot_one_run_to_its_run_directory(runs):
    result = runner.invoke(app, ["plot", "absa-run", "--runs-dir", str(runs)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"plot: {runs / 'absa-run' / 'plot.png'}"
    _assert_png(runs / "absa-run" / "plot.png")


def test_plot_overlays_runs_by_time_to_a_chosen_file(runs, tmp_path):
    output = tmp_path / "figures" / "absa-vs-fixed.png"
    output.parent.mkdir()  # a missing folder is refused, as for `absa hessian --plot` (below)
    result = runner.invoke(app, ["plot", "absa-run", "fixed-run", "--x", "time", "-o", str(output),
                                 "--runs-dir", str(runs)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"plot: {output}"
    _assert_png(output)


def test_plot_by_epoch_default_name_and_a_run_without_probes(runs):
    result = runner.invoke(app, ["plot", "fixed-run", "--x", "epoch", "--runs-dir", str(runs)])
    assert result.exit_code == 0, result.output
    _assert_png(runs / "fixed-run" / "plot-epoch.png")


def test_epoch_ticks_are_whole_epochs(tmp_path):
    """A three-epoch run on `--x epoch` had ticks at 1.25, 1.5, 1.75, ...: an epoch is a whole number."""
    import matplotlib.pyplot as plt

    figure = plots.draw([plots.load_run(_write_run(tmp_path, "short", "absa", [128, 256, 256]))], "epoch")
    figure.canvas.draw()
    ticks = [tick for ax in figure.axes for tick in ax.get_xticks()]
    plt.close(figure)
    assert len(ticks) >= 3 and all(tick == int(tick) for tick in ticks), ticks


def test_unknown_run(runs):
    """The same line as `absa runs show` and `absa resume`: where it looked, and how to find the run's id."""
    plotted = runner.invoke(app, ["plot", "absa-run", "nope", "--runs-dir", str(runs)])
    assert_user_error(plotted, f"no run 'nope' in {runs}", "`absa runs list`", "--runs-dir")
    shown = runner.invoke(app, ["runs", "show", "nope", "--runs-dir", str(runs)])
    assert shown.exit_code == 2 and shown.stderr == plotted.stderr


def test_run_id_that_is_not_a_plain_name(runs):
    assert_user_error(runner.invoke(app, ["plot", "../absa-run", "--runs-dir", str(runs)]), "not a plain name")


def test_run_without_metrics(runs):
    """A folder that is no run says so as `absa runs show` does (it named no fix); a run that has written no record
    yet says when it can be plotted."""
    (runs / "empty").mkdir()
    plotted = runner.invoke(app, ["plot", "empty", "--runs-dir", str(runs)])
    assert_user_error(plotted, f"no run 'empty' in {runs}; list runs with `absa runs list`")
    assert plotted.stderr == runner.invoke(app, ["runs", "show", "empty", "--runs-dir", str(runs)]).stderr
    (runs / "empty" / "run.json").write_text("{}")
    assert_user_error(runner.invoke(app, ["plot", "empty", "--runs-dir", str(runs)]),
                      "run empty has no completed epoch yet (no ", "; plot it after its first epoch")


def test_run_without_a_completed_epoch(runs):
    (runs / "starting").mkdir()
    (runs / "starting" / "metrics.jsonl").write_text(json.dumps({"kind": "geometry", "epoch": 1}) + "\n")
    assert_user_error(runner.invoke(app, ["plot", "starting", "--runs-dir", str(runs)]), "no completed epoch yet")


def test_damaged_metrics_line(runs):
    path = runs / "absa-run" / "metrics.jsonl"
    path.write_text("garbage\n" + path.read_text())
    assert_user_error(runner.invoke(app, ["plot", "absa-run", "--runs-dir", str(runs)]), "metrics.jsonl:1 ")


@pytest.mark.parametrize("line, says", [
    ("null", "(a JSON NoneType, not an object)"),
    ("[1, 2]", "(a JSON list, not an object)"),
    ('{"kind": "epoch", "epoch": "1", "updates": 5}', "(its epoch is '1', not a whole number)"),
    ('{"kind": "epoch", "epoch": 3}', "(its updates are None, not a number)"),
    ('{"kind": "epoch", "epoch": 3, "updates": 5, "lr": "0.1"}', "(its lr is '0.1', not a number)"),
    ('{"kind": "resize", "epoch": null}', "(its epoch is None, not a whole number)"),
])
def test_a_hand_damaged_record_is_one_line_naming_its_line(runs, line, says):
    """Each of these was a traceback (AttributeError, KeyError, TypeError) from the figure's code."""
    path = runs / "absa-run" / "metrics.jsonl"
    path.write_text(path.read_text() + line + "\n" + json.dumps(RESIZE) + "\n")  # not the last line: not a cut
    number = len(path.read_text().splitlines()) - 1
    assert_user_error(runner.invoke(app, ["plot", "absa-run", "--runs-dir", str(runs)]),
                      f"metrics.jsonl:{number} is not a record absa writes {says}")


def test_missing_matplotlib(runs, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    result = runner.invoke(app, ["plot", "absa-run", "--runs-dir", str(runs)])
    assert_user_error(result)
    assert result.stderr.strip() == ("error: absa plot needs matplotlib; "
                                     "install it with `pip install 'absa-train[plot]'`")


@pytest.mark.parametrize("output, says", [
    ("plot.txt", "--output {path}: the extension .txt is not an image format; end the name with one of .png, .pdf"),
    ("plotx", "--output {path}: the name has no extension"),
    (".", "--output {path} is a directory; give a file name"),
    ("missing/p.png", "--output {path}: the folder {parent} does not exist; create it or choose another path"),
    ("notes.txt/more/p.png", "--output {path}: {root}/notes.txt is a file, not a folder; move it or choose another "
                             "path"),  # was "the folder ... does not exist" (review)
])
def test_an_output_that_cannot_be_written_is_one_line_and_nothing_is_created(runs, tmp_path, output, says):
    path = tmp_path / output
    (tmp_path / "notes.txt").write_text("a file where a folder is asked for")
    result = runner.invoke(app, ["plot", "absa-run", "-o", str(path), "--runs-dir", str(runs)])
    assert_user_error(result, says.format(path=path, parent=path.parent, root=tmp_path))
    assert not (tmp_path / "missing").exists() and not path.with_suffix(".png").exists()
    assert not path.exists() or path.is_dir()


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare for a private read-only mount")
def test_a_run_directory_that_cannot_be_written_asks_for_another_output(runs):
    """The run's folder bind-mounted read-only in a private mount namespace (as root in a user namespace,
    permission bits alone would not stop the write)."""
    run = runs / "absa-run"
    script = (f"mount --bind {run} {run} && mount -o remount,bind,ro {run} && exec {sys.executable} -m absa_cli "
              f"plot absa-run --runs-dir {runs}")
    result = with_private_mounts(script, timeout=120)
    assert result.returncode == 2 and not result.stdout, result.stderr
    assert result.stderr == (f"error: --output {run / 'plot.png'}: the folder {run} cannot be written (Read-only "
                             f"file system); choose another path with --output\n")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc, where no file can be created")
def test_a_folder_that_makes_no_files_is_not_called_missing(runs):
    """mkdir in /proc fails with ENOENT: the line said "(No such file or directory)" of a folder that exists."""
    result = runner.invoke(app, ["plot", "absa-run", "-o", "/proc/x.png", "--runs-dir", str(runs)])
    assert_user_error(result, "error: --output /proc/x.png: the folder /proc cannot be written (no file can be "
                              "created there); choose another path with --output")


def test_bad_x_axis(runs):
    result = runner.invoke(app, ["plot", "absa-run", "--x", "steps", "--runs-dir", str(runs)])
    assert_user_error(result, "invalid value for '--x'", "'steps' is not one of 'updates', 'epoch', 'time'",
                      "see `absa plot --help`")


def test_importing_plot_loads_neither_matplotlib_nor_torch():
    code = ("import sys, absa_cli.cli.app, absa_cli.run.plots; "
            "print(sorted({'matplotlib', 'torch', 'numpy'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
