"""The step-time model (decide/throughput.py): fitted from timed geometries it recovers known coefficients; a
profile file round-trips and a bad one is one line; with a model that makes a larger group slower the driver does
not grow the group and the reason names the model, with a model where growing pays (or none) it grows as before."""

from __future__ import annotations

import io

import pytest

from absa_cli import config as config_mod
from absa_cli.config import ConfigError
from absa_cli.decide.geometry import BatchGeometry
from absa_cli.decide.membership import decide_membership
from absa_cli.decide.throughput import StepModel, fastest_workers, fit
from absa_cli.driver.controller import Controller
from absa_cli.run import profile as profiles
from absa_cli.run.metrics import Console
from absa_cli.run.rundir import RunDir

from scripted_group import ScriptedGroup

TRUE = StepModel(model="c1", device="cpu", gradient_bytes=4_000_000, compute_s=(0.002, 0.0005),
                 data_s=(0.0001, 0.00002), allreduce_latency_s=0.001, allreduce_bandwidth=1e9, optimizer_s=0.003,
                 other_s=0.0005)


def _entry(model: StepModel, n: int, b: int, k: int, steps: int = 10, attacked: float = 0.0) -> dict:
    fgsm = model.compute_s[0] + model.compute_s[1] * attacked * b if attacked else 0.0  # FGSM's pass, by hand
    split = {"data": k * (model.data_s[0] + model.data_s[1] * b),
             "compute": k * (model.compute_s[0] + model.compute_s[1] * b + fgsm),
             "allreduce": model.allreduce(n), "optimizer": model.optimizer_s, "other": model.other_s}
    split["total"] = sum(split.values())
    return {"num_workers": n, "per_worker_batch_size": b, "grad_accum_steps": k, "steps": steps, "step_s": split,
            **({"attacked": attacked} if attacked else {})}


def test_fit_recovers_the_coefficients_it_was_made_from():
    entries = [_entry(TRUE, n, b, k) for n, b, k in [(1, 32, 1), (1, 64, 2), (2, 32, 1), (4, 64, 1), (8, 128, 2)]]
    fitted = fit(entries, "c1", "cpu", TRUE.gradient_bytes, sources=["synthetic"])
    assert fitted.compute_s == pytest.approx(TRUE.compute_s, rel=1e-6)
    assert fitted.data_s == pytest.approx(TRUE.data_s, rel=1e-6)
    assert fitted.allreduce_latency_s == pytest.approx(TRUE.allreduce_latency_s, rel=1e-6)
    assert fitted.allreduce_bandwidth == pytest.approx(TRUE.allreduce_bandwidth, rel=1e-6)
    for n, b, k in [(16, 64, 1), (3, 10, 4)]:
        assert fitted.step_s(n, b, k) == pytest.approx(TRUE.step_s(n, b, k), rel=1e-6)
    with pytest.raises(ConfigError, match="no timed training steps"):
        fit([{"num_workers": 1, "per_worker_batch_size": 32, "grad_accum_steps": 1, "steps": 3}], "c1", "cpu", 1)


def test_an_fgsm_share_costs_one_more_pass_over_the_attacked_samples():
    """ABSA's adversarial epochs: per micro-batch one more forward and backward, over the attacked share s of it:
    c₀ + c₁·s·b more (25 of every 128 samples at the start: s = 25/128)."""
    s = 25 / 128
    extra = TRUE.step_s(2, 64, 3, attacked=s) - TRUE.step_s(2, 64, 3)
    assert extra == pytest.approx(3 * (TRUE.compute_s[0] + TRUE.compute_s[1] * s * 64), rel=1e-12)
    assert TRUE.epoch_seconds(1, 64, 1, 10, 0, 0, attacked=s) == pytest.approx(10 * TRUE.step_s(1, 64, 1, s))


def test_fit_separates_the_fgsm_pass_from_the_step_it_was_timed_in():
    """Records of a run whose early epochs carried FGSM (``attacked``) fit the same coefficients as records without
    it; read as plain steps, those epochs would have inflated the compute line."""
    mixed = [_entry(TRUE, 1, 128, 1, attacked=25 / 128), _entry(TRUE, 1, 128, 2, attacked=12 / 128),
             _entry(TRUE, 2, 128, 2, attacked=6 / 128), _entry(TRUE, 2, 128, 4), _entry(TRUE, 1, 64, 1)]
    fitted = fit(mixed, "c1", "cpu", TRUE.gradient_bytes)
    assert fitted.compute_s == pytest.approx(TRUE.compute_s, rel=1e-6)
    naive = fit([{k: v for k, v in e.items() if k != "attacked"} for e in mixed], "c1", "cpu", TRUE.gradient_bytes)
    assert naive.step_s(1, 128, 1) > 1.05 * TRUE.step_s(1, 128, 1)  # what ignoring the share would fit


def test_timings_that_fall_with_the_batch_never_fit_a_negative_cost():
    """A loaded machine can time the small batch slower than the large one (measured: `absa calibrate` fitted
    −0.014 s per sample under load); no cost per sample or per step may come out negative."""
    noisy = [_entry(TRUE, 1, b, 1) for b in (16, 32, 64)]
    noisy[0]["step_s"]["compute"], noisy[2]["step_s"]["compute"] = 0.2, 0.01
    noisy[0]["step_s"]["data"] = 0.05
    fitted = fit(noisy, "c1", "cpu", TRUE.gradient_bytes)
    assert fitted.compute_s[0] >= 0 and fitted.compute_s[1] > 0
    assert fitted.data_s[0] >= 0 and fitted.data_s[1] > 0


def test_a_profile_round_trips_and_a_bad_one_is_one_line(tmp_path):
    path = tmp_path / "profile.json"
    profiles.save(TRUE, path)
    assert profiles.load(path) == TRUE
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="is not an absa profile"):
        profiles.load(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="cannot read the profile"):
        profiles.load(tmp_path / "missing.json")


SLOW_SYNC = StepModel(model="c1 (scripted)", device="cpu", gradient_bytes=4_000_000, compute_s=(0.0, 0.0001),
                      allreduce_latency_s=0.5)  # an all-reduce that costs far more than it saves


def test_the_fastest_worker_count_is_the_one_the_model_predicts():
    best, predicted = fastest_workers(SLOW_SYNC, 256, 8, 32, BatchGeometry.plan)
    assert best == 1 and predicted[1] < predicted[8]
    best, _ = fastest_workers(TRUE, 256, 8, 32, BatchGeometry.plan)
    assert best == 8  # compute dominates: more workers pay
    m = decide_membership(256, None, capacity=8, current=1, max_workers=8, per_worker_max=32, model=SLOW_SYNC)
    assert (m.num_workers, m.geometry.grad_accum_steps, m.wanted) == (1, 8, 1)
    assert "no more: the step-time model of c1 (scripted) on cpu predicts" in m.reason


BASE = ["epochs=3", "data.train_size=256", "batch.global_batch_size=64", "batch.per_worker_max=32",
        "policy.max_global_batch=256", "policy.name=abs", "policy.duration=1", "logging.chunk_steps=2",
        "cluster.max_workers=2"]


def _train(tmp_path, model: StepModel | None) -> tuple[RunDir, ScriptedGroup]:
    extra = []
    if model is not None:
        profiles.save(model, tmp_path / "profile.json")
        extra = [f"cluster.profile={tmp_path / 'profile.json'}"]
    config = config_mod.load("quickstart", [*BASE, *extra])
    run = RunDir.create(tmp_path / "runs", config)
    group = ScriptedGroup(offered=2)
    Controller(config, run, group, Console(stream=io.StringIO(), force_plain=True)).train()
    return run, group


def test_with_a_model_that_makes_a_larger_group_slower_the_group_does_not_grow(tmp_path):
    run, group = _train(tmp_path, SLOW_SYNC)
    assert [r["num_workers"] for r in run.records("epoch")] == [1, 1, 1]
    assert [r["global_batch_size"] for r in run.records("epoch")] == [64, 128, 256]  # the batch grows all the same
    reasons = [g["reason"] for g in run.records("geometry")]
    assert all("the step-time model of c1 (scripted) on cpu predicts" in reason for reason in reasons), reasons
    assert group.demanded == [] and group.prepared == []  # nothing asked of the cluster, nothing started ahead


@pytest.mark.parametrize("model", [None, TRUE], ids=["no model", "growing pays"])
def test_without_a_model_or_where_growing_pays_the_group_grows_as_before(tmp_path, model):
    run, _ = _train(tmp_path, model)
    assert [r["num_workers"] for r in run.records("epoch")] == [2, 2, 2]
    assert not any("step-time model" in g["reason"] for g in run.records("geometry"))


def test_an_unreadable_profile_is_one_line_before_anything_starts(tmp_path):
    from typer.testing import CliRunner

    from absa_cli.cli.app import app
    from conftest import assert_user_error

    result = CliRunner().invoke(app, ["train", "quickstart", f"cluster.profile={tmp_path / 'none.json'}",
                                      "--runs-dir", str(tmp_path / "runs")])
    assert_user_error(result, "cannot read the profile")
    assert not (tmp_path / "runs").exists()
