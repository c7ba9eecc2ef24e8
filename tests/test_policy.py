"""Batch/LR/adversarial policies, replayed on scripted eigenvalue sequences (pure: no torch, no clock).

Checked against hand-written trajectories that follow PAPER.md's rule: the first λ is λ_ref; λ ≤ λ_ref / eig_ratio
grows the batch (×growth, λ_ref = λ), at most once per epoch; `policy.duration` epochs without growth grow anyway;
the cap clamps and stops probing; the adversarial fraction halves per growth, is 0 at the cap and after
`policy.adv_stop_frac` of the epochs. LR values are computed by hand from optim.lr × batch/ref × decay × ramps.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from absa_cli import config as config_mod
from absa_cli.geometry import steps_in_epoch
from absa_cli.policy import (Decision, EpochMeasurements, adv_stop_epoch, make_policy, schedule_bounds,
                             trajectory)


def make_config(policy: dict | None = None, optim: dict | None = None, epochs: int = 90,
                batch: int = 128) -> config_mod.RunConfig:
    layer = {"epochs": epochs, "batch": {"global_batch_size": batch},
             "optim": {"lr": 0.1, "ref_batch_size": 128, "decay_epochs": [30, 60, 80], **(optim or {})},
             "policy": policy or {}}
    return config_mod.from_layers([(layer, "the test")])


def batches(decisions: list[Decision]) -> list[int]:
    return [d.global_batch_size for d in decisions]


def advs(decisions: list[Decision]) -> list[float]:
    return [d.adv_ratio for d in decisions]


# --------------------------------------------------------------------------------------------- the rule

def test_paper_trajectory_batch_adv_and_reasons():
    config = make_config({"max_global_batch": 1024})
    decisions = trajectory(config, [6.4, 5.0, 3.2, 3.0, 1.0, 0.5, 0.1, 0.01])
    assert batches(decisions) == [128, 128, 128, 256, 256, 512, 1024, 1024, 1024]
    assert advs(decisions) == [0.2, 0.2, 0.2, 0.1, 0.1, 0.05, 0.0, 0.0, 0.0]
    assert [d.grew for d in decisions] == [False, False, False, True, False, True, True, False, False]
    assert [d.probe_next for d in decisions] == [True] * 6 + [False] * 3
    assert decisions[2].reason == "batch 128 kept: λ_max 5 > λ_ref 6.4 / policy.eig_ratio=2 " \
                                  "(epoch 2 of policy.duration=10)"
    assert decisions[3].reason == "batch 128→256: λ_max 3.2 ≤ λ_ref 6.4 / policy.eig_ratio=2; " \
                                  "adversarial fraction 0.2→0.1 (÷ policy.growth=2)"
    assert "policy.max_global_batch=1024" in decisions[6].reason and "probing stops" in decisions[6].reason
    assert "adversarial fraction 0 at the cap" in decisions[6].reason
    # epoch 8 was not probed (probe_next was False): the cap decision says so and names the field
    assert decisions[8].reason == "batch 1024 kept: at the cap policy.max_global_batch=1024; probing stops"


def test_initial_decisions():
    assert make_policy(make_config()).initial() == Decision(
        128, 0.2, True, False, "start at batch 128 (batch.global_batch_size); adversarial fraction 0.2 "
                               "(policy.adv_ratio)")
    abs_initial = make_policy(make_config({"name": "abs"})).initial()
    assert (abs_initial.global_batch_size, abs_initial.adv_ratio, abs_initial.probe_next) == (128, 0.0, True)
    at_cap = make_policy(make_config({"max_global_batch": 128})).initial()
    assert (at_cap.adv_ratio, at_cap.probe_next) == (0.0, False)
    assert "policy.max_global_batch=128" in at_cap.reason
    no_adv = make_policy(make_config({"adv_stop_frac": 0.0})).initial()
    assert no_adv.adv_ratio == 0.0


def test_drop_exactly_at_threshold_grows_just_above_does_not():
    config = make_config({"name": "abs"})
    assert batches(trajectory(config, [8.0, 4.0])) == [128, 128, 256]
    assert batches(trajectory(config, [8.0, 4.000001])) == [128, 128, 128]
    ratio3 = make_config({"name": "abs", "eig_ratio": 4.0})
    assert batches(trajectory(ratio3, [8.0, 2.0, 0.5])) == [128, 128, 256, 512]


def test_first_probe_only_sets_the_reference():
    decisions = trajectory(make_config(), [0.001])
    assert batches(decisions) == [128, 128]
    assert "first probe sets λ_ref = λ_max 0.001" in decisions[1].reason
    assert "policy.eig_ratio=2" in decisions[1].reason


def test_reference_moves_to_the_lambda_at_growth():
    # after growing at 4.0, λ_ref = 4.0: 2.5 is above 4/2, 2.0 is at it
    assert batches(trajectory(make_config(), [8.0, 4.0, 2.5, 2.0])) == [128, 128, 256, 256, 512]


def test_at_most_one_growth_per_epoch():
    decisions = trajectory(make_config({"growth": 2}), [100.0, 1e-9])
    assert batches(decisions) == [128, 128, 256]  # a 1e11 drop still grows once, by policy.growth
    policy = make_policy(make_config())
    policy.observe(EpochMeasurements(1, 90, 10.0))
    with pytest.raises(ValueError, match="one decision per epoch"):
        policy.observe(EpochMeasurements(1, 90, 1.0))


def test_duration_fallback():
    config = make_config({"name": "abs", "duration": 3})
    decisions = trajectory(config, [5.0, 5.0, 5.0, 4.0, 4.0, 1.9])
    # 3 epochs without growth → grow at epoch 3 and λ_ref = 5.0; 4.0 > 5.0 / 2 twice; 1.9 ≤ 5.0 / 2 grows
    assert batches(decisions) == [128, 128, 128, 256, 256, 256, 512]
    assert decisions[3].reason == "batch 128→256: 3 epochs without growth (policy.duration=3)"
    assert decisions[4].reason.endswith("(epoch 1 of policy.duration=3)")
    assert "λ_ref 5" in decisions[6].reason


def test_duration_fallback_sets_reference_to_current_lambda():
    config = make_config({"name": "abs", "duration": 2})
    # epoch 2: duration growth with λ = 6 → λ_ref = 6; epoch 3: 3.0 ≤ 6/2 grows (it would not against 8)
    assert batches(trajectory(config, [8.0, 6.0, 3.0])) == [128, 128, 256, 512]


def test_duration_fallback_without_probes():
    policy = make_policy(make_config({"name": "abs", "duration": 2}))
    first = policy.observe(EpochMeasurements(1, 90, None))
    assert first.reason == "batch 128 kept: not probed (epoch 1 of policy.duration=2)"
    second = policy.observe(EpochMeasurements(2, 90, None))
    assert (second.global_batch_size, second.grew) == (256, True)
    assert policy.state.eig_ref is None


def test_non_finite_lambda_is_ignored():
    policy = make_policy(make_config({"name": "abs"}))
    d = policy.observe(EpochMeasurements(1, 90, float("nan")))
    assert "ignored" in d.reason and policy.state.eig_ref is None


def test_cap_clamps_and_stops_probing():
    config = make_config({"max_global_batch": 300}, batch=100)
    decisions = trajectory(config, [8.0, 4.0, 2.0, 1.0, 0.5])
    assert batches(decisions) == [100, 100, 200, 300, 300, 300]  # 200 → 400 is clamped to 300
    assert [d.probe_next for d in decisions] == [True, True, True, False, False, False]
    assert advs(decisions) == [0.2, 0.2, 0.1, 0.0, 0.0, 0.0]
    assert "(clamped to the cap policy.max_global_batch=300)" in decisions[3].reason
    assert all(d.global_batch_size <= 300 for d in decisions)


def test_growth_factor_four():
    config = make_config({"name": "abs", "growth": 4, "max_global_batch": 8192})
    assert batches(trajectory(config, [8.0, 4.0, 2.0, 1.0, 0.5])) == [128, 128, 512, 2048, 8192, 8192]


# --------------------------------------------------------------------------------------------- adversarial

def test_adversarial_fraction_halves_per_growth_and_stops_at_half_the_epochs():
    config = make_config({"duration": 100}, epochs=10)
    decisions = trajectory(config, [8.0, 4.0, 2.0, 3.0, 3.0, 0.5, 0.1])
    assert batches(decisions) == [128, 128, 256, 512, 512, 512, 1024, 2048]
    assert advs(decisions) == [0.2, 0.2, 0.1, 0.05, 0.05, 0.0, 0.0, 0.0]  # off after epoch 5 of 10
    assert decisions[5].reason.endswith("adversarial training off after 5 of 10 epochs (policy.adv_stop_frac=0.5)")
    assert "policy.adv_stop_frac" not in decisions[6].reason  # said once


def test_adversarial_stop_epoch_rounding():
    assert adv_stop_epoch(0.5, 90) == 45
    assert adv_stop_epoch(0.3, 10) == 3  # 0.3 × 10 = 3.0000000000000004 in floats
    assert adv_stop_epoch(0.5, 9) == 5  # the first ceil(4.5) epochs are adversarial
    assert adv_stop_epoch(0.0, 90) == 0
    config = make_config({"adv_stop_frac": 0.3, "duration": 100}, epochs=10)
    assert advs(trajectory(config, [1.0] * 4)) == [0.2, 0.2, 0.2, 0.0, 0.0]


def test_abs_is_never_adversarial():
    decisions = trajectory(make_config({"name": "abs", "max_global_batch": 1024}), [8.0, 4.0, 2.0, 1.0, 0.5])
    assert set(advs(decisions)) == {0.0}
    assert batches(decisions) == [128, 128, 256, 512, 1024, 1024]
    assert not any("adversarial" in d.reason for d in decisions)


# --------------------------------------------------------------------------------------------- confirm

def test_confirm_two_needs_two_consecutive_drops():
    config = make_config({"name": "abs", "confirm": 2})
    one_low = trajectory(config, [8.0, 3.0, 5.0, 3.0, 5.0])
    assert batches(one_low) == [128] * 6  # each drop is interrupted: the count resets
    assert "on 1 of policy.confirm=2 probes" in one_low[2].reason
    two_low = trajectory(config, [8.0, 3.0, 3.5])
    assert batches(two_low) == [128, 128, 128, 256]
    assert two_low[3].reason == "batch 128→256: λ_max 3.5 ≤ λ_ref 8 / policy.eig_ratio=2 on 2 probes in a row " \
                                "(policy.confirm=2)"
    # after the growth λ_ref = 3.5 and the count restarts from zero
    assert batches(trajectory(config, [8.0, 3.0, 3.5, 1.0, 5.0, 1.0, 1.0])) == \
        [128, 128, 128, 256, 256, 256, 256, 512]


def test_confirm_count_survives_an_unprobed_epoch():
    policy = make_policy(make_config({"name": "abs", "confirm": 2}))
    policy.observe(EpochMeasurements(1, 90, 8.0))
    policy.observe(EpochMeasurements(2, 90, 3.0))
    assert policy.observe(EpochMeasurements(3, 90, None)).global_batch_size == 128
    assert policy.observe(EpochMeasurements(4, 90, 3.0)).global_batch_size == 256


# --------------------------------------------------------------------------------------------- fixed

@pytest.mark.parametrize("name, batch", [("fixed", 128), ("fixed-large", 4096)])
def test_fixed_policies_never_change_and_never_probe(name, batch):
    config = make_config({"name": name, "max_global_batch": 4096})
    decisions = trajectory(config, [8.0, 1.0, 0.1, 0.01] + [None] * 20)
    assert set(batches(decisions)) == {batch}
    assert not any(d.probe_next or d.grew or d.adv_ratio for d in decisions)
    field = "batch.global_batch_size" if name == "fixed" else "policy.max_global_batch"
    assert all(field in d.reason for d in decisions)


def test_fixed_lr_is_the_optim_schedule():
    policy = make_policy(make_config({"name": "fixed"}))
    assert [policy.lr(p, 0) for p in (0.0, 29.9, 30.0, 60.0, 85.0)] == pytest.approx(
        [0.1, 0.1, 0.02, 0.004, 0.0008])


def test_fixed_large_goyal_warmup():
    # cap 1024 = 8 × 128: target LR 0.8; warm-up from optim.lr = 0.1 over 5 epochs (optim.warmup_epochs = 0)
    config = make_config({"name": "fixed-large", "max_global_batch": 1024}, optim={"decay_epochs": [3, 30]})
    policy = make_policy(config)
    expected = {0.0: 0.1, 1.0: 0.24, 2.5: 0.45, 2.99: 0.1 + 0.7 * 2.99 / 5,
                3.0: (0.1 + 0.7 * 3 / 5) * 0.2, 5.0: 0.16, 10.0: 0.16, 30.0: 0.032}
    for progress, lr in expected.items():
        assert policy.lr(progress, 0) == pytest.approx(lr), progress
    assert "over 5 epochs (optim.warmup_epochs=0 → 5, as Goyal et al.)" in policy.initial().reason
    # an explicit optim.warmup_epochs is used instead, and optim.warmup_start_factor does not apply
    explicit = make_policy(make_config({"name": "fixed-large", "max_global_batch": 1024},
                                       optim={"warmup_epochs": 2.0, "warmup_start_factor": 0.5}))
    assert [explicit.lr(p, 0) for p in (0.0, 1.0, 2.0)] == pytest.approx([0.1, 0.45, 0.8])


# --------------------------------------------------------------------------------------------- LR

def test_lr_scales_linearly_with_the_batch_and_decays():
    policy = make_policy(make_config({"name": "abs"}))
    assert policy.lr(0.0, 0) == pytest.approx(0.1)
    policy.observe(EpochMeasurements(1, 90, 8.0))
    policy.observe(EpochMeasurements(2, 90, 4.0))  # 256: LR ×2, the paper's jump (lr_ramp_steps = 0)
    assert policy.lr(2.0, 100) == pytest.approx(0.2)
    assert policy.lr(30.0, 5000) == pytest.approx(0.04)


def test_lr_ramp_after_growth_is_linear_in_updates_with_decay_on_top():
    config = make_config({"name": "abs", "lr_ramp_steps": 10}, optim={"decay_epochs": [3]})
    policy = make_policy(config)
    policy.observe(EpochMeasurements(1, 90, 8.0, updates=50))
    policy.observe(EpochMeasurements(2, 90, 4.0, updates=100))  # 128 → 256 at update 100
    # from 0.1 (the LR at 128) to 0.2 over 10 updates
    assert [policy.lr(2.0 + u / 1000, 100 + u) for u in (0, 1, 5, 9, 10, 20)] == pytest.approx(
        [0.1, 0.11, 0.15, 0.19, 0.2, 0.2])
    assert policy.lr(3.0, 105) == pytest.approx(0.15 * 0.2)  # step decay multiplies the ramped value
    # the ramp is part of the saved state: a restored policy continues it
    restored = make_policy(config)
    restored.load_state_dict(json.loads(json.dumps(policy.state_dict())))
    assert restored.lr(2.0, 103) == pytest.approx(0.13)


def test_lr_ramp_continues_from_an_unfinished_ramp():
    config = make_config({"name": "abs", "lr_ramp_steps": 10})
    policy = make_policy(config)
    policy.observe(EpochMeasurements(1, 90, 8.0, updates=5))
    policy.observe(EpochMeasurements(2, 90, 4.0, updates=10))  # 128 → 256, ramp 0.1 → 0.2 from update 10
    policy.observe(EpochMeasurements(3, 90, 2.0, updates=15))  # mid-ramp (0.15) → 512: ramp 0.15 → 0.4
    assert policy.lr(3.0, 15) == pytest.approx(0.15)
    assert policy.lr(3.0, 20) == pytest.approx(0.275)
    assert policy.lr(3.0, 25) == pytest.approx(0.4)


def test_lr_ramp_needs_the_update_count():
    policy = make_policy(make_config({"name": "abs", "lr_ramp_steps": 10}))
    policy.observe(EpochMeasurements(1, 90, 8.0))
    with pytest.raises(ValueError, match="EpochMeasurements.updates"):
        policy.observe(EpochMeasurements(2, 90, 4.0))


def test_trajectory_counts_updates_for_the_ramp():
    config = make_config({"name": "abs", "lr_ramp_steps": 4})
    decisions = trajectory(config, [8.0, 4.0], num_train_samples=1000)  # would raise without update counts
    assert batches(decisions) == [128, 128, 256]
    assert steps_in_epoch(1000, 128) == 8  # the last step takes the remaining 104 samples


# --------------------------------------------------------------------------------------------- state

def test_state_round_trips_through_json_and_continues_identically():
    config = make_config({"confirm": 2, "duration": 4, "max_global_batch": 2048, "lr_ramp_steps": 3}, epochs=20)
    eigs = [8.0, 3.0, 3.5, 1.0, 5.0, 1.0, 1.0, 0.2, 0.2, 0.2, 0.1, 0.01]
    straight = make_policy(config)
    reference = [straight.observe(EpochMeasurements(e, 20, eig, updates=10 * e))
                 for e, eig in enumerate(eigs, start=1)]
    for cut in range(1, len(eigs)):
        first = make_policy(config)
        for e, eig in enumerate(eigs[:cut], start=1):
            first.observe(EpochMeasurements(e, 20, eig, updates=10 * e))
        saved = json.dumps(first.state_dict())
        second = make_policy(config)
        second.load_state_dict(json.loads(saved))
        assert second.state == first.state
        assert second.lr(cut + 0.5, 10 * cut + 1) == first.lr(cut + 0.5, 10 * cut + 1)
        rest = [second.observe(EpochMeasurements(e, 20, eig, updates=10 * e))
                for e, eig in enumerate(eigs[cut:], start=cut + 1)]
        assert rest == reference[cut:], cut


def test_state_holds_plain_values_only():
    policy = make_policy(make_config())
    policy.observe(EpochMeasurements(1, 90, 8.0))
    for value in policy.state_dict().values():
        assert value is None or isinstance(value, (bool, int, float, str))


def test_state_from_another_policy_or_version_is_refused():
    absa, fixed = make_policy(make_config()), make_policy(make_config({"name": "fixed"}))
    with pytest.raises(ValueError, match="policy.name=absa"):
        fixed.load_state_dict(absa.state_dict())
    with pytest.raises(ValueError, match="unknown keys"):
        absa.load_state_dict({**absa.state_dict(), "surprise": 1})
    with pytest.raises(ValueError, match="lacks keys"):
        absa.load_state_dict({k: v for k, v in absa.state_dict().items() if k != "global_batch_size"})


# --------------------------------------------------------------------------------------------- bounds, reasons

def test_schedule_bounds():
    bounds = schedule_bounds(make_config({"max_global_batch": 1024, "duration": 3}, epochs=12))
    assert bounds.fastest == [128, 128, 256, 512, 1024] + [1024] * 7
    assert bounds.slowest == [128, 128, 128, 256, 256, 256, 512, 512, 512, 1024, 1024, 1024]
    fixed = schedule_bounds(make_config({"name": "fixed"}, epochs=5))
    assert fixed.fastest == fixed.slowest == [128] * 5


def test_every_reason_names_a_config_field():
    scripts = [
        ({"max_global_batch": 512}, [8.0, 4.0, 5.0, 1.0, 0.1, 0.1]),
        ({"duration": 2, "confirm": 2}, [8.0, 3.0, 9.0, 9.0, None, None]),
        ({"name": "fixed"}, [1.0]),
        ({"name": "fixed-large"}, [1.0]),
        ({"duration": 100}, [8.0] * 50),
    ]
    for policy_fields, eigs in scripts:
        for decision in trajectory(make_config(policy_fields, epochs=60), eigs):
            assert any(f in decision.reason for f in ("policy.", "batch.global_batch_size")), decision.reason
    adv_stop = trajectory(make_config({"duration": 100}, epochs=4), [8.0, 8.0])[2]
    assert "policy.adv_stop_frac=0.5" in adv_stop.reason


def test_policy_module_is_pure():
    source = Path(__file__).resolve().parent.parent / "absa_cli" / "policy.py"
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert imported <= {"__future__", "dataclasses", "math", "typing", "absa_cli.config", "absa_cli.geometry",
                        "absa_cli.schedule"}, imported
    assert "time" not in imported and "torch" not in imported
