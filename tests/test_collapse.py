"""A run that collapses without a NaN — its loss blown up to finite values, or its test accuracy back at chance after
it was well above — stops as a divergence does: one `error:` line naming the epoch, the numbers and what to change;
`run.json` says `diverged`; no checkpoint or record of the collapsed epoch. Healthy runs never trip the rule: the
histories below are real runs' epoch records (train loss, test accuracy), rounded."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from absa_cli import config as config_mod
from absa_cli.cli.app import app
from absa_cli.decide.collapse import CHANCE, LOSS, check_collapse
from absa_cli.driver.outcome import Collapsed, Diverged, advice, check_collapsed
from absa_cli.driver.progress import EpochTotals, Progress
from absa_cli.run.rundir import RunDir

from conftest import TINY

# `absa train quickstart --local`: the batch grows after epochs 3, 7 and 9; when FGSM stops (epoch 6) the test
# accuracy dips from 0.831 to 0.741 (its test loss 0.47 → 0.72) while the train loss falls
HEALTHY_QUICKSTART = [(2.180, 0.244), (1.604, 0.484), (1.219, 0.593), (0.931, 0.691), (0.675, 0.831),
                      (0.484, 0.741), (0.387, 0.885), (0.333, 0.893), (0.208, 0.940), (0.166, 0.957)]
# the same by an earlier version of absa: in the epoch after the growth to 512 the test accuracy dips from 0.889 to
# 0.720 (its test loss triples) while the train loss falls
HEALTHY_POST_GROWTH_DIP = [(2.191, 0.261), (1.592, 0.503), (1.219, 0.634), (0.889, 0.703), (0.676, 0.840),
                      (0.491, 0.841), (0.403, 0.889), (0.379, 0.720), (0.277, 0.939), (0.185, 0.936)]
# a 12-epoch quickstart at optim.lr=0.02: after the growth to 1,024 (LR ×2) the train loss rises 2.5× from its low,
# 0.087 → 0.218, and the test accuracy falls 0.894 → 0.795; it recovers after the LR decay
HEALTHY_LOSS_RISE = [(2.158, 0.238), (1.500, 0.539), (0.960, 0.713), (0.580, 0.743), (0.344, 0.855), (0.264, 0.851),
                     (0.140, 0.894), (0.087, 0.894), (0.108, 0.876), (0.218, 0.795), (0.129, 0.900), (0.054, 0.895)]
# a tiny run (256 samples) that never leaves chance, its loss above ln 10 in the first epochs
NEVER_LEARNS = [(2.336, 0.070), (2.313, 0.078), (2.280, 0.078), (2.261, 0.094), (2.228, 0.094), (2.201, 0.094)]
# `absa train quickstart --local optim.lr=0.1 policy.duration=1`: the batch doubles every epoch with the LR; at 1,024
# (LR 0.8) the network dies in epoch 4 and trains on at chance, its loss then blowing up (66.8, 586.7)
COLLAPSES_AT_CHANCE = [(2.197, 0.291), (1.932, 0.410), (1.711, 0.364), (2.949, 0.100), (66.75, 0.102),
                       (586.7, 0.097)]
# the same at optim.lr=0.15: its best, 0.294, was short of 3 / 10, so epoch 3 at chance is not called a collapse
# (near chance, accuracy is noise); the blown-up loss of epoch 4 is
COLLAPSES_BY_LOSS = [(2.250, 0.208), (2.031, 0.294), (2.421, 0.100), (9.571, 0.100), (2.678, 0.100)]


def first_collapse(history: list[tuple[float, float]], num_classes: int = 10) -> tuple[int, str] | None:
    """(epoch, sign) of the first collapsed epoch of ``history``, walked as the controller does: each epoch against
    the best test accuracy of the epochs before it."""
    best = 0.0
    for epoch, (train_loss, test_acc) in enumerate(history, 1):
        collapse = check_collapse(num_classes, train_loss, test_acc, best)
        if collapse is not None:
            return epoch, collapse.sign
        best = max(best, test_acc)
    return None


@pytest.mark.parametrize("history", [HEALTHY_QUICKSTART, HEALTHY_POST_GROWTH_DIP, HEALTHY_LOSS_RISE, NEVER_LEARNS],
                         ids=["quickstart", "post-growth-dip", "loss-rise-after-growth", "never-learns"])
def test_healthy_runs_never_collapse(history):
    assert first_collapse(history) is None


def test_accuracy_back_at_chance_after_a_good_best_is_a_collapse():
    assert first_collapse(COLLAPSES_AT_CHANCE) == (4, CHANCE)
    collapse = check_collapse(10, 2.949, 0.100, 0.410)
    assert "fell to 0.1" in collapse.what and "after a best of 0.41" in collapse.what and "1.5 / 10" in collapse.what


def test_a_blown_up_loss_is_a_collapse_and_a_best_near_chance_is_not_enough():
    assert first_collapse(COLLAPSES_BY_LOSS) == (4, LOSS)
    assert "averaged 9.571" in check_collapse(10, 9.571, 0.100, 0.294).what


def test_the_first_epoch_has_no_history_but_ln_c():
    assert first_collapse([(5.5e7, 0.100)]) == (1, LOSS)  # batch 1024 at optim.lr=0.25: epoch 1 averaged 5.5e7
    assert first_collapse([(2.336, 0.070)]) is None  # at chance with a loss above ln C: where every run starts
    assert first_collapse([(2.0 * math.log(10) * 0.99, 0.100)]) is None


def test_accuracy_at_chance_with_a_training_loss_below_ln_c_is_not_a_collapse():
    """The model still fits its training data: a bad evaluation (e.g. BatchNorm statistics right after an LR jump),
    not an unlearned model."""
    assert check_collapse(10, 0.379, 0.100, 0.889) is None
    assert check_collapse(10, math.log(10), 0.100, 0.889).sign == CHANCE


def test_the_bounds_scale_with_the_number_of_classes():
    ln100 = math.log(100)  # CIFAR-100: chance 0.01, ln C 4.61
    assert check_collapse(100, 2.01 * ln100, 0.300, 0.400).sign == LOSS
    assert check_collapse(100, 1.99 * ln100, 0.300, 0.400) is None
    assert check_collapse(100, ln100, 0.014, 0.030).sign == CHANCE  # below 1.5 %, after 3 %
    assert check_collapse(100, ln100, 0.016, 0.400) is None
    assert check_collapse(100, ln100, 0.010, 0.029) is None
    assert check_collapse(10, 5.0, 0.300, 0.400).sign == LOSS  # 5.0 is a healthy loss at 100 classes, not at 10


def test_a_nan_loss_is_left_to_divergence():
    """NaN is caught per chunk before the epoch ends (tests/test_divergence.py); every comparison with it is false."""
    assert check_collapse(10, math.nan, 0.100, 0.900) is None


def test_the_switch_turns_the_check_off():
    progress = Progress(epoch=3, updates=120, best_test_acc=0.41)
    unlearned = EpochTotals(loss_sum=30.0, samples=10, lr=0.8)  # a mean loss of 3.0, above ln 10
    off = config_mod.load("quickstart", ["policy.stop_on_collapse=false"])
    check_collapsed(off, progress, unlearned, 0.100, 1024, "epoch-0003.pt")
    with pytest.raises(Collapsed, match=r"^training collapsed in epoch 4: the test accuracy fell to 0\.1, .*; update "
                                        r"120, global batch 1024, LR 0\.8; the last good checkpoint is epoch-0003\.pt"):
        check_collapsed(config_mod.load("quickstart", []), progress, unlearned, 0.100, 1024, "epoch-0003.pt")


def test_the_advice_fits_the_policy_and_offers_a_ramp_only_to_a_run_without_one():
    """A run that sets policy.lr_ramp_epochs > 0 and still collapsed is not told to set it (the measured collapses
    came epochs after a growth: docs/benchmarks.md); a policy that never grows the batch is told neither about the
    ramp nor, for `fixed`, about the cap it never reaches."""
    progress = Progress(epoch=27, updates=560, best_test_acc=0.94)
    blown = EpochTotals(loss_sum=56.0, samples=10, lr=0.32)
    said = {}
    for label, overrides in {"absa": [], "ramped": ["policy.lr_ramp_epochs=1"], "abs": ["policy.name=abs"],
                             "fixed": ["policy.name=fixed"], "fixed-large": ["policy.name=fixed-large"]}.items():
        with pytest.raises(Collapsed) as caught:
            check_collapsed(config_mod.load("quickstart", overrides), progress, blown, 0.553, 2048, "epoch-0027.pt")
        said[label] = str(caught.value).split("epoch-0027.pt. ")[1]
    tail = ", or train on regardless with policy.stop_on_collapse=false"
    grows = ("Start a new run with a lower optim.lr, a lower policy.max_global_batch, or policy.lr_ramp_epochs > 0 "
             "(docs/policy.md)" + tail)
    assert said["absa"] == said["abs"] == grows
    assert said["ramped"] == ("Start a new run with a lower optim.lr or a lower policy.max_global_batch "
                                "(docs/policy.md; this run sets policy.lr_ramp_epochs=1 already)" + tail)
    assert said["fixed"] == "Start a new run with a lower optim.lr (docs/policy.md)" + tail
    assert said["fixed-large"] == ("Start a new run with a lower optim.lr or a lower policy.max_global_batch "
                                     "(docs/policy.md)" + tail)
    ramped = config_mod.load("quickstart", ["policy.lr_ramp_epochs=2"])
    with pytest.raises(Diverged, match=r"\. Start a new run with a lower optim\.lr or a lower policy\.max_global_batch "
                                       r"\(docs/policy\.md; this run sets policy\.lr_ramp_epochs=2 already\)$"):
        raise Diverged("the training loss became nan", 28, 561, 2048, [0.32], "epoch-0027.pt", advice(ramped))


def test_a_collapsing_run_stops_with_one_line_and_is_marked_diverged(tmp_path, one_thread):
    """At optim.lr=20 (LR 10 at batch 64) the first epoch's loss blows up to ~7e8 and stays finite: today's code
    would train on at chance to the end."""
    result = CliRunner().invoke(app, ["train", "quickstart", "--local", "--runs-dir", str(tmp_path), *TINY,
                                      "epochs=3", "optim.lr=20"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "summary:" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    assert errors[0].startswith("error: training collapsed in epoch 1: the training loss averaged ")
    assert "more than 2 × ln 10 = 4.61" in errors[0] and "global batch 64, LR 10" in errors[0]
    assert "no checkpoint was written yet" in errors[0] and "lower optim.lr" in errors[0]
    assert "policy.stop_on_collapse=false" in errors[0]
    (run_path,) = tmp_path.iterdir()
    info = json.loads((run_path / "run.json").read_text())
    assert info["status"] == "diverged" and info["error"].startswith("training collapsed in epoch 1")
    assert info["last_epoch"] == 0
    assert list((run_path / "checkpoints").glob("*.pt")) == []
    assert RunDir(run_path).records("epoch") == []
