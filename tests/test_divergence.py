"""A run whose loss becomes NaN or infinite stops at once: one `error:` line naming the step, the batch, the LR and
the fix; `run.json` says `diverged`; no checkpoint of the diverged weights is written, the earlier ones stay."""

from __future__ import annotations

import io
import json

import pytest
from typer.testing import CliRunner

from absa_cli import config as config_mod
from absa_cli.cli.app import app
from absa_cli.driver.controller import Controller
from absa_cli.driver.outcome import Diverged
from absa_cli.driver.local_group import LocalGroup
from absa_cli.run.metrics import Console
from absa_cli.run.rundir import RunDir

from conftest import TINY


def test_a_diverging_run_stops_with_one_line_and_is_marked_diverged(tmp_path, one_thread):
    result = CliRunner().invoke(app, ["train", "quickstart", "--local", "--runs-dir", str(tmp_path), *TINY,
                                      "optim.lr=1e6"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "training diverged" in errors[0] and "no checkpoint was written yet" in errors[0]
    assert "epoch 1, global batch 64" in errors[0] and "optim.lr" in errors[0]
    assert "summary:" not in result.output
    (run_path,) = tmp_path.iterdir()
    info = json.loads((run_path / "run.json").read_text())
    assert info["status"] == "diverged" and "training diverged" in info["error"]
    assert list((run_path / "checkpoints").glob("*.pt")) == []
    assert RunDir(run_path).records("epoch") == []
    assert errors[0].endswith("Start a new run with a lower optim.lr, a lower policy.max_global_batch, or "
                              "policy.lr_ramp_epochs > 0 (docs/policy.md)")
    # a policy that never grows is advised only what applies to it (the advice follows the run's config)
    fixed = CliRunner().invoke(app, ["train", "quickstart", "--local", "--runs-dir", str(tmp_path / "fixed"), *TINY,
                                     "epochs=1", "optim.lr=1e6", "policy.name=fixed"])
    (line,) = [line for line in fixed.stderr.splitlines() if line.startswith("error: ")]
    assert fixed.exit_code == 1 and line.endswith("; no checkpoint was written yet. Start a new run with a lower "
                                                  "optim.lr (docs/policy.md)"), fixed.output


def test_divergence_after_a_good_epoch_keeps_its_checkpoint_and_writes_no_other(tmp_path, one_thread):
    config = config_mod.load("quickstart", [*TINY, "epochs=3", "cluster.max_workers=1"])
    run = RunDir.create(tmp_path, config)
    controller = Controller(config, run, LocalGroup(config), Console(stream=io.StringIO(), force_plain=True))
    controller.run_epoch()  # a good epoch and its checkpoint
    controller.policy.lr = lambda epoch_progress: 1e6  # an LR that diverges, from the next step on
    with pytest.raises(Diverged, match=r"the last good checkpoint is epoch-0001\.pt") as caught:
        controller.run_all()
    assert "epoch 2" in str(caught.value)
    assert [e["file"] for e in json.loads((run.checkpoints_dir / "manifest.json").read_text())["checkpoints"]] == \
        ["epoch-0001.pt"]
    assert [p.name for p in run.checkpoints_dir.glob("*.pt")] == ["epoch-0001.pt"]
    assert [r["epoch"] for r in run.records("epoch")] == [1]


def test_weights_that_become_non_finite_on_an_epochs_last_step_are_caught_before_its_checkpoint(tmp_path,
                                                                                                one_thread):
    """The last step's loss is computed before its update, so only the weights show it: no evaluation, probe or
    checkpoint of them follows."""
    config = config_mod.load("quickstart", [*TINY, "epochs=3", "cluster.max_workers=1"])
    run = RunDir.create(tmp_path, config)
    controller = Controller(config, run, LocalGroup(config), Console(stream=io.StringIO(), force_plain=True))
    controller.run_epoch()
    lr = controller.policy.lr
    last_step_of_epoch_2 = 1 + 192 / 256  # TINY: 256 samples, 4 steps of 64
    controller.policy.lr = lambda progress: float("inf") if progress == last_step_of_epoch_2 else lr(progress)
    with pytest.raises(Diverged, match=r"the weights became NaN or infinite by update 8 \(epoch 2.*LR .*inf") as caught:
        controller.run_all()
    assert "the last good checkpoint is epoch-0001.pt" in str(caught.value)
    assert [p.name for p in run.checkpoints_dir.glob("*.pt")] == ["epoch-0001.pt"]
    assert [r["epoch"] for r in run.records("epoch")] == [1]
