"""`absa hessian` on a checkpoint written by `absa train`: table, --json, --plot, and its user errors.

The numbers themselves are checked against exact references in test_curvature.py; here the command must agree
with the library on the same model and batch, and produce a PNG.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from absa_cli.cli.app import app

from conftest import TINY, with_private_mounts

runner = CliRunner()
FAST = ["--batch-size", "16", "--seed", "1", "--trace-samples", "10", "--density-steps", "12"]


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    result = runner.invoke(app, ["train", "quickstart", *TINY, "epochs=1", "--local", "--runs-dir", str(runs)])
    assert result.exit_code == 0, result.output
    (path,) = runs.glob("*/checkpoints/epoch-0001.pt")
    return path


def test_json_is_one_object_with_the_contract_fields(trained_checkpoint):
    result = runner.invoke(app, ["hessian", str(trained_checkpoint), "--json", "--top-k", "3", "--trace", *FAST])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)  # exactly one JSON document on stdout
    eigenvalues = payload["top_eigenvalues"]
    assert len(eigenvalues) == 3 and eigenvalues == sorted(eigenvalues, reverse=True) and eigenvalues[0] > 0
    assert isinstance(payload["trace"], float) and payload["trace_std_error"] > 0
    assert payload["hvp_count"] > 0 and payload["seconds"] > 0
    power = json.loads(runner.invoke(app, ["hessian", str(trained_checkpoint), "--json", "--method", "power",
                                           "--tol", "1e-5", "--max-iter", "60", *FAST]).stdout)
    # Two methods, one Hessian: power iteration's answer is a Rayleigh quotient, which never exceeds λ_max. (It
    # need not be close: early in training a negative eigenvalue of similar magnitude makes it stall in between.)
    assert len(power["top_eigenvalues"]) == 1 and power["hvp_count"] <= 60
    assert power["top_eigenvalues"][0] <= eigenvalues[0] * (1 + 1e-6), (power["top_eigenvalues"], eigenvalues)


def test_table_and_plot(trained_checkpoint, tmp_path):
    png = tmp_path / "density.png"
    result = runner.invoke(app, ["hessian", str(trained_checkpoint), "--plot", str(png), "--per-layer", *FAST])
    assert result.exit_code == 0, result.output
    assert "λ_1" in result.stdout and "trace" in result.stdout and "HVPs" in result.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_bare_checkpoint_needs_a_preset(trained_checkpoint, tmp_path):
    bare = tmp_path / "bare.pt"
    bare.write_bytes(trained_checkpoint.read_bytes())
    result = runner.invoke(app, ["hessian", str(bare), "--json", *FAST])
    assert result.exit_code == 2 and "--preset" in result.stderr and "Traceback" not in result.output
    with_preset = runner.invoke(app, ["hessian", str(bare), "--json", "--preset", "quickstart", *FAST])
    assert with_preset.exit_code == 0, with_preset.output


def test_missing_and_corrupt_checkpoints_exit_2(tmp_path):
    missing = runner.invoke(app, ["hessian", str(tmp_path / "nope.pt")])
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
    corrupt = tmp_path / "epoch-0001.pt"
    corrupt.write_bytes(b"\x00garbage")
    result = runner.invoke(app, ["hessian", str(corrupt)])
    assert result.exit_code == 2 and "cannot be loaded safely" in result.stderr
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1


def test_power_with_top_k_is_refused_before_any_work(tmp_path):
    result = runner.invoke(app, ["hessian", str(tmp_path / "missing.pt"), "--method", "power", "--top-k", "2"])
    assert result.exit_code == 2 and "use --method lanczos" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_it_says_whose_checkpoint_it_reads_and_takes_a_run_directory(trained_checkpoint):
    run_dir = trained_checkpoint.parent.parent
    result = runner.invoke(app, ["hessian", str(run_dir), "--json", *FAST])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["checkpoint"] == str(trained_checkpoint) and payload["run_id"] == run_dir.name
    assert payload["owner"].startswith(f"run {run_dir.name} (preset quickstart, config ")
    assert payload["config_fingerprint"] in payload["owner"] and "epoch 1" in payload["owner"]
    assert f"reading {trained_checkpoint}, the newest good checkpoint in {run_dir}" in result.stderr


def test_unconverged_eigenvalues_are_marked_and_a_raised_max_iter_is_said(trained_checkpoint):
    result = runner.invoke(app, ["hessian", str(trained_checkpoint), "--top-k", "6", "--max-iter", "3", *FAST])
    assert result.exit_code == 0, result.output
    assert "note: --max-iter 3 raised to 8" in result.stderr
    (warning,) = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert "eigenvalues did not converge" in warning and "raise --max-iter" in warning
    assert result.stdout.count("(not converged)") == int(warning.split("warning: ")[1].split()[0]) >= 1
    payload = json.loads(runner.invoke(app, ["hessian", str(trained_checkpoint), "--json", "--top-k", "6",
                                             "--max-iter", "3", *FAST]).stdout)
    assert payload["iterations"] == 8 and not all(payload["eigen_converged_each"])
    converged = runner.invoke(app, ["hessian", str(trained_checkpoint), "--top-k", "1", "--tol", "0.5", *FAST])
    assert converged.exit_code == 0 and "warning" not in converged.stderr and "note" not in converged.stderr


def test_checks_that_need_the_model_come_before_the_computation(trained_checkpoint, tmp_path):
    too_many = runner.invoke(app, ["hessian", str(trained_checkpoint), "--top-k", "100000000"])
    assert too_many.exit_code == 2 and not too_many.stdout
    assert too_many.stderr.startswith("error: --top-k 100000000 is more eigenvalues than the model has parameters")
    for plot, says in ((tmp_path / "missing" / "d.png", "does not exist"), (tmp_path / "d.csv", "not an image"),
                       (tmp_path, "is a directory")):
        result = runner.invoke(app, ["hessian", str(trained_checkpoint), "--plot", str(plot), *FAST])
        assert result.exit_code == 2 and not result.stdout and says in result.stderr, result.output


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare for a private, tiny file system")
def test_a_plot_that_cannot_be_written_after_the_computation_loses_no_number(trained_checkpoint, tmp_path):
    """A file system that fills up while the density is computed (here: a real 8 KiB tmpfs, in a private mount
    namespace): the numbers are printed first, then one error line; exit code 2."""
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    script = (f"mount -t tmpfs -o size=8k none {tiny} && exec {sys.executable} -m absa_cli hessian "
              f"{trained_checkpoint} --json --density --plot {tiny / 'density.png'} {' '.join(FAST)}")
    result = with_private_mounts(script, timeout=300)
    assert result.returncode == 2, result.stderr
    payload = json.loads(result.stdout)
    assert payload["top_eigenvalues"][0] > 0 and payload["density"]["grid"]
    assert "plot" not in payload and "No space left on device" in payload["plot_error"]  # names no missing file
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("error: cannot write the plot") and "No space left on device" in line


def test_ctrl_c_during_the_computation_is_one_line_and_exit_130(trained_checkpoint, monkeypatch):
    from absa_cli.worker import hessian as hessian_mod

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hessian_mod, "analyse", interrupt)
    result = runner.invoke(app, ["hessian", str(trained_checkpoint), "--json", *FAST])
    assert (result.exit_code, result.stderr.strip(), result.stdout) == (130, "interrupted; nothing was computed", "")
