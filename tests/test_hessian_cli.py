"""`absa hessian` on a checkpoint written by `absa train`: table, --json, --plot, and its user errors.

The numbers themselves are checked against exact references in test_curvature.py; here the command must agree
with the library on the same model and batch, and produce a PNG.
"""

from __future__ import annotations

import json
import re
import shutil
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


@pytest.fixture(scope="module")
def narrow_checkpoint(tmp_path_factory):
    """A run trained with overrides that change the model's shapes (model.width) and its training set: its weights
    fit neither the preset alone nor the preset with one of the overrides."""
    runs = tmp_path_factory.mktemp("narrow")
    result = runner.invoke(app, ["train", "quickstart", *TINY, "epochs=1", "model.width=0.02", "--local",
                                 "--runs-dir", str(runs)])
    assert result.exit_code == 0, result.output
    (path,) = runs.glob("*/checkpoints/epoch-0001.pt")
    return path


def _bare(checkpoint, folder, name="bare.pt", recipe=True):
    """A copy outside its run directory; ``recipe=False``: as absa wrote it before checkpoints named their run."""
    import torch

    from absa_cli.run import checkpoint as checkpoint_mod

    bare = folder / name
    state = torch.load(checkpoint, weights_only=True)
    if not recipe:
        del state["run"]
    checkpoint_mod.save(bare, state)
    return bare


def _json(args):
    result = runner.invoke(app, ["hessian", *map(str, args), "--json", *FAST])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


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


def test_fewer_samples_than_asked_for_are_noted(trained_checkpoint):
    result = runner.invoke(app, ["hessian", str(trained_checkpoint), "--json", "--batch-size", "200",
                                 "--num-batches", "2", "--max-iter", "3"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["num_samples"] == 256  # TINY's training set
    assert ("note: --batch-size 200 × --num-batches 2 asks for 400 samples; the training set has 256: all of them "
            "were used") in result.stderr


def test_table_and_plot(trained_checkpoint, tmp_path):
    png = tmp_path / "density.png"
    result = runner.invoke(app, ["hessian", str(trained_checkpoint), "--plot", str(png), "--per-layer", *FAST])
    assert result.exit_code == 0, result.output
    assert "λ_1" in result.stdout and "trace" in result.stdout and "HVPs" in result.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_a_bare_checkpoint_is_rebuilt_from_the_recipe_it_records(narrow_checkpoint, tmp_path):
    """Outside its run directory, a checkpoint of a run trained with overrides gives the numbers it gives inside it,
    with or without --preset, and says which config it used; an override that contradicts its recipe is refused."""
    in_run, _ = _json([narrow_checkpoint])
    bare = _bare(narrow_checkpoint, tmp_path)
    for extra in ([], ["--preset", "quickstart"], ["--preset", "quickstart", "model.width=0.02"]):
        payload, stderr = _json([bare, *extra])
        assert payload["top_eigenvalues"] == in_run["top_eigenvalues"], extra
        assert payload["num_parameters"] == in_run["num_parameters"], extra
        assert payload["config_source"].startswith(f"preset quickstart{' model.width=0.02' * (len(extra) == 3)} + "
                                                   f"the checkpoint's recipe (data.train_size=256, ")
        assert ("model.width=0.02" in payload["config_source"]) and f"config: {payload['config_source']}" in stderr
    contradicts = runner.invoke(app, ["hessian", str(bare), "--preset", "quickstart", "model.width=0.5", *FAST])
    assert contradicts.exit_code == 2 and not contradicts.stdout and "Traceback" not in contradicts.output
    assert contradicts.stderr.startswith("error: model.width=0.5 contradicts checkpoint ")
    assert "records model.width=0.02" in contradicts.stderr and len(contradicts.stderr.splitlines()) == 1
    alone, _ = _json([bare, "model.width=0.02"])  # without --preset: on the preset the checkpoint names (review:
    assert alone["top_eigenvalues"] == in_run["top_eigenvalues"]  # overrides were refused without one)
    assert alone["config_source"].startswith("preset quickstart model.width=0.02 + the checkpoint's recipe")
    moved, _ = _json([narrow_checkpoint, "data.root=/data/elsewhere"])  # a run's data that moved: on its config
    assert moved["config_source"].startswith(f"its run's {narrow_checkpoint.parent.parent / 'config.yaml'} "
                                             f"data.root=/data/elsewhere")


def test_a_data_key_comes_from_the_checkpoint_not_the_preset(trained_checkpoint, tmp_path):
    """data.train_size changes no shape: the weights fit the preset alone, but its training set is another one. The
    probe must draw from the set the run trained on, as inside the run directory."""
    in_run, _ = _json([trained_checkpoint])
    payload, _ = _json([_bare(trained_checkpoint, tmp_path), "--preset", "quickstart"])
    assert payload["top_eigenvalues"] == in_run["top_eigenvalues"]
    assert "data.train_size=256" in payload["config_source"] and "model.width" not in payload["config_source"]
    assert in_run["config_source"].startswith(f"its run's {trained_checkpoint.parent.parent / 'config.yaml'}, "
                                              f"matching the checkpoint's recipe")


def test_a_checkpoint_without_a_recipe_needs_the_preset_and_overrides_it_was_trained_with(narrow_checkpoint,
                                                                                          tmp_path):
    old = _bare(narrow_checkpoint, tmp_path, recipe=False)
    result = runner.invoke(app, ["hessian", str(old), "--json", *FAST])
    assert result.exit_code == 2 and "Traceback" not in result.output and len(result.stderr.splitlines()) == 1
    assert "records no recipe" in result.stderr and "--preset quickstart KEY=VALUE" in result.stderr
    misfit = runner.invoke(app, ["hessian", str(old), "--preset", "quickstart", *FAST])
    assert misfit.exit_code == 2 and "Traceback" not in misfit.output and len(misfit.stderr.splitlines()) == 1
    # the first tensor that does not fit, with both shapes, and a fix that works (torch's many lines were cut to
    # "Error(s) in loading state_dict for C1:")
    assert misfit.stderr.startswith("error: the checkpoint's weights do not fit c1 (model.width=0.5) for shapes: ")
    assert re.search(r": \S+ is \[[\d, ]+\] in the checkpoint, \[[\d, ]+\] in the model \(and \d+ more tensors "
                     r"differ\); pass the preset and the KEY=VALUE overrides it was trained with: --preset "
                     r"quickstart KEY=VALUE \.\.\.$", misfit.stderr.strip()), misfit.stderr
    payload, stderr = _json([old, "--preset", "quickstart", "model.width=0.02", "data.train_size=256"])
    assert payload["top_eigenvalues"] == _json([narrow_checkpoint])[0]["top_eigenvalues"]
    assert "config: preset quickstart model.width=0.02 data.train_size=256 (the checkpoint records no recipe" in stderr
    assert "checkpoint of: a checkpoint that names no run" in stderr


def test_a_damaged_run_config_falls_back_to_the_recipe_or_is_named(narrow_checkpoint, tmp_path):
    """`epochs: [` in the run's config.yaml was `error: not valid YAML: ...`, naming neither the file nor a fix."""
    import shutil

    in_run, _ = _json([narrow_checkpoint])
    run = shutil.copytree(narrow_checkpoint.parent.parent, tmp_path / "run")
    (run / "config.yaml").write_text("epochs: [\n")
    payload, stderr = _json([run / "checkpoints" / "epoch-0001.pt"])
    assert payload["top_eigenvalues"] == in_run["top_eigenvalues"]  # the checkpoint's own recipe
    assert payload["config_source"].startswith(f"preset quickstart (its run's {run / 'config.yaml'} cannot be read "
                                               f"(") and "+ the checkpoint's recipe" in payload["config_source"]
    _bare(narrow_checkpoint, run / "checkpoints", "old.pt", recipe=False)  # nothing to fall back to: one line
    result = runner.invoke(app, ["hessian", str(run / "checkpoints" / "old.pt"), *FAST])
    assert result.exit_code == 2 and "Traceback" not in result.output and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"error: its run's {run / 'config.yaml'} cannot be read (")
    assert "restore it from a copy, or pass the preset and the KEY=VALUE overrides" in result.stderr


def test_plot_help_names_the_formats_it_writes():
    result = runner.invoke(app, ["hessian", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and ".pdf" in result.stdout and ".svg" in result.stdout
    assert "PNG of the density" not in result.stdout


def test_missing_and_corrupt_checkpoints_exit_2(tmp_path):
    missing = runner.invoke(app, ["hessian", str(tmp_path / "nope.pt")])
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
    corrupt = tmp_path / "epoch-0001.pt"
    corrupt.write_bytes(b"\x00garbage")
    result = runner.invoke(app, ["hessian", str(corrupt)])
    assert result.exit_code == 2 and "cannot be loaded safely: it is not a PyTorch checkpoint" in result.stderr
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
    assert f"checkpoint of: {payload['owner']}\nconfig: {payload['config_source']}\n" in result.stderr


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
    # the limit it names is the real one (it said "20 or fewer" while accepting 21)
    dim = int(too_many.stderr.split("parameters (")[1].split(")")[0].replace(",", ""))
    assert f"pass --top-k {dim} or fewer" in too_many.stderr
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
    *said_first, line = [line for line in result.stderr.splitlines() if line.strip()]
    assert [said.split(":")[0] for said in said_first] == ["checkpoint of", "config"]
    assert line.startswith("error: cannot write the plot") and "No space left on device" in line


def test_ctrl_c_during_the_computation_is_one_line_and_exit_130(trained_checkpoint, monkeypatch):
    """... after the lines that say, before the computation, whose checkpoint it is and which config it uses."""
    from absa_cli.worker import hessian as hessian_mod

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hessian_mod, "analyse", interrupt)
    result = runner.invoke(app, ["hessian", str(trained_checkpoint), "--json", *FAST])
    said = result.stderr.strip().splitlines()
    assert (result.exit_code, said[-1], result.stdout) == (130, "interrupted; nothing was computed", "")
    assert said[0].startswith(f"checkpoint of: run {trained_checkpoint.parent.parent.name} (preset quickstart, config ")
    assert said[1].startswith("config: its run's ") and len(said) == 3


def test_the_owner_line_writes_a_mid_epoch_position_as_the_console_counts_epochs():
    """`absa hessian` said `epoch 0 + 1344 samples` of a file the console wrote 1,344 samples into epoch 1 (review)."""
    from absa_cli.run.checkpoint import owner_line

    state = {"run": {"id": "quickstart-x", "fingerprint": "0baed5b8"}, "preset": "quickstart", "epoch": 0,
             "samples_seen": 1344}
    assert owner_line(state) == "run quickstart-x (preset quickstart, config 0baed5b8), 1,344 samples into epoch 1"
    assert owner_line({**state, "samples_seen": 0}).endswith("config 0baed5b8), epoch 0")
    assert owner_line({**state, "samples_seen": "x"}).endswith("epoch 0")  # a hand-made state: no traceback


def test_options_out_of_range_are_one_line_before_any_work(tmp_path):
    """--tol inf (or 1e400) stopped at the second product and printed a wrong λ as converged; a seed past 64 bits
    was torch's overflow traceback."""
    missing = str(tmp_path / "missing.pt")
    for args, says in ((["--tol", "1e400"], "--tol is a relative tolerance, from 0 up to (not including) 1, got inf"),
                       (["--tol", "1"], "got 1; e.g. --tol 1e-4"), (["--tol", "nan"], "invalid value for '--tol'"),
                       (["--seed", str(2 ** 64)], f"--seed must be a 64-bit integer (between -2**63 and 2**63 - 1), "
                                                  f"got {2 ** 64}")):
        result = runner.invoke(app, ["hessian", missing, *args])
        assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1, result.output
        assert result.stderr.startswith("error: ") and says in result.stderr, result.stderr


def test_weights_that_are_not_finite_are_one_line(trained_checkpoint, tmp_path):
    """Every product would be NaN (Lanczos raised linalg.eigh's error): named, exit 2."""
    import torch

    from absa_cli.run import checkpoint as checkpoint_mod

    state = torch.load(trained_checkpoint, weights_only=True)
    name = next(key for key, value in state["model"].items() if value.is_floating_point())
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    checkpoint_mod.save(tmp_path / "nan.pt", state)
    result = runner.invoke(app, ["hessian", str(tmp_path / "nan.pt"), "--preset", "quickstart", *FAST])
    assert result.exit_code == 2 and not result.stdout, result.output
    assert result.stderr.splitlines()[-1] == (f"error: the checkpoint's weights are not finite: {name} holds NaN or "
                                              f"infinite values; inspect an earlier checkpoint of the run")


def test_products_that_overflow_from_finite_weights_are_one_line_not_a_density_traceback():
    """Finite weights whose logits overflow: every product is NaN, and trace and density had nothing to work on."""
    import torch

    from absa_cli.errors import UserError
    from absa_cli.worker import hessian as hessian_mod

    model = torch.nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.fill_(3e38)
    batches = [(torch.ones(2, 4), torch.tensor([0, 1]))]
    with pytest.raises(UserError, match=r"^the curvature at this checkpoint is not finite \(a Hessian-vector product"):
        hessian_mod.analyse(model, batches, hessian_mod.HessianOptions(density=True, trace=True))


def test_a_top_k_past_the_distinct_eigenvalues_says_how_many_were_found(narrow_checkpoint):
    """A tiny model's Hessian has many zero eigenvalues: Lanczos finds each distinct one once, so --top-k up to
    the parameter count returned fewer values without a word."""
    dim = json.loads(runner.invoke(app, ["hessian", str(narrow_checkpoint), "--json", *FAST]).stdout)["num_parameters"]
    result = runner.invoke(app, ["hessian", str(narrow_checkpoint), "--json", "--top-k", str(dim), *FAST])
    assert result.exit_code == 0, result.output
    found = len(json.loads(result.stdout)["top_eigenvalues"])
    assert found < dim
    assert (f"note: --top-k {dim} asks for {dim:,} eigenvalues; {found:,} distinct ones were found before the Krylov "
            f"space ran out") in result.stderr
