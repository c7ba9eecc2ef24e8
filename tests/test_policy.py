"""Batch/LR/adversarial policies, replayed on scripted eigenvalue sequences (pure: no torch, no clock).

Checked against hand-written trajectories that follow PAPER.md's rule, as the authors' reference code behaves: the
first λ is λ_ref; λ ≤ λ_ref / eig_ratio grows the batch (×growth, λ_ref = λ), at most once per epoch;
`policy.duration` epochs without growth grow anyway and leave λ_ref as it is; the cap clamps and stops probing; the
adversarial fraction halves per growth, is 0 at the cap and after floor(`policy.adv_stop_frac` × epochs) epochs.
The scenario replays (monotone decay, slow 0.95ᵉ decay, noise, a rise after each growth, a constant λ, a NaN first
probe) state each batch trajectory by hand. LR values are computed by hand from optim.lr × batch/ref × decay × ramps.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from absa_cli import config as config_mod
from absa_cli.decide.policy import (CURVATURE, FALLBACK, Decision, EpochMeasurements, adv_stop_epoch,
                                   attacked_share, make_policy, num_adversarial)
from absa_cli.decide.replay import schedule_bounds, trajectory


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
    assert [d.growth for d in decisions if d.grew] == ["curvature"] * 3
    assert [d.epochs_early for d in decisions if d.grew] == [7, 8, 9]  # duration 10: epochs 3, 2, 1 of it
    assert [d.probe_next for d in decisions] == [True] * 6 + [False] * 3
    assert decisions[2].reason == "batch 128 kept: λ_max 5 > λ_ref 6.4 / policy.eig_ratio=2 " \
                                  "(epoch 2 of policy.duration=10)"
    assert decisions[3].reason == "batch 128→256: λ_max 3.2 ≤ λ_ref 6.4 / policy.eig_ratio=2; λ_ref is now 3.2; " \
                                  "adversarial fraction 0.2→0.1 (÷ policy.growth=2)"
    assert "policy.max_global_batch=1024" in decisions[6].reason and "probing stops" in decisions[6].reason
    assert "adversarial fraction 0 at the cap" in decisions[6].reason
    # epoch 8 was not probed (probe_next was False): the cap decision says so and names the field
    assert decisions[8].reason == "batch 1024 kept: at the cap policy.max_global_batch=1024; probing stops"


def test_initial_decisions():
    assert make_policy(make_config()).initial() == Decision(
        128, 0.2, True, None, "start at batch 128 (batch.global_batch_size); adversarial fraction 0.2 "
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
    decisions = trajectory(config, [5.0, 5.0, 5.0, 4.0, 4.0, 2.5])
    # 3 epochs without growth → grow after epoch 3, λ_ref stays 5.0; 4.0 > 5.0 / 2 twice; 2.5 ≤ 5.0 / 2 grows
    assert batches(decisions) == [128, 128, 128, 256, 256, 256, 512]
    assert decisions[3].reason == "batch 128→256: 3 epochs without growth (policy.duration=3); λ_max 5 > λ_ref 5 " \
                                  "/ policy.eig_ratio=2; λ_ref 5 kept (a fallback growth leaves it)"
    assert (decisions[3].growth, decisions[3].epochs_early) == ("fallback", 0)
    assert decisions[4].reason.endswith("(epoch 1 of policy.duration=3)")
    one = trajectory(make_config({"name": "abs", "duration": 1}), [5.0, 5.0])
    assert one[2].reason.startswith("batch 256→512: 1 epoch without growth (policy.duration=1)")  # was "1 epochs"
    assert decisions[6].growth == "curvature" and "λ_ref 5 / policy.eig_ratio=2" in decisions[6].reason
    assert decisions[6].epochs_early == 0  # the third epoch after the fallback growth: the fallback's own epoch


def test_fallback_growth_leaves_the_reference_unchanged():
    """The reference sets λ_ref only at the first probe and at a curvature growth. Re-anchored at the fallback
    growth after epoch 2 (λ_ref = 6), 3.5 would not be a halving; against the kept λ_ref 8 it is."""
    config = make_config({"name": "abs", "duration": 2})
    decisions = trajectory(config, [8.0, 6.0, 3.5])
    assert batches(decisions) == [128, 128, 256, 512]
    assert [d.growth for d in decisions] == [None, None, "fallback", "curvature"]
    assert "λ_ref 8 kept" in decisions[2].reason
    assert decisions[3].reason.startswith("batch 256→512: λ_max 3.5 ≤ λ_ref 8 / policy.eig_ratio=2; λ_ref is now 3.5")
    assert decisions[3].epochs_early == 1


def test_duration_fallback_without_probes():
    policy = make_policy(make_config({"name": "abs", "duration": 2}))
    first = policy.observe(EpochMeasurements(1, 90, None))
    assert first.reason == "batch 128 kept: not probed (epoch 1 of policy.duration=2)"
    second = policy.observe(EpochMeasurements(2, 90, None))
    assert (second.global_batch_size, second.grew) == (256, True)
    assert policy.state.eig_ref is None


def test_nothing_grows_after_the_last_epoch_and_the_last_epoch_is_not_probed():
    """A decision after the last epoch would apply to no epoch, and the last epoch's probe could only feed it."""
    config = make_config({"name": "abs", "duration": 4}, epochs=4)
    decisions = trajectory(config, [8.0, 5.0, 5.0, 1.0])
    assert batches(decisions) == [128] * 5 and not any(d.grew for d in decisions)  # the fallback's epoch is the last
    assert [d.probe_next for d in decisions] == [True, True, True, False, False]  # epoch 4 is not probed: λ 1.0 unread
    assert decisions[4].reason == "batch 128 kept: the run ends after epoch 4 (epochs=4)"
    assert not make_policy(make_config(epochs=1)).initial().probe_next


def test_non_finite_lambda_is_ignored():
    policy = make_policy(make_config({"name": "abs"}))
    d = policy.observe(EpochMeasurements(1, 90, float("nan")))
    assert "ignored" in d.reason and policy.state.eig_ref is None


# ---------------------------------------------------------------------------- scenario replays, by hand
# Each script is a λ per epoch; the expected trajectory lists the batch *trained* in epochs 1, 2, ... (the
# decision after epoch e applies to epoch e+1), worked out by hand from the rule in docs/policy.md with
# policy.duration=3, base 128, cap 1024, growth ×2, eig_ratio 2.

def _scenario(eigs: list[float | None], **policy) -> tuple[list[int], list[str | None]]:
    config = make_config({"name": "abs", "duration": 3, "max_global_batch": 1024, **policy}, epochs=12)
    decisions = trajectory(config, eigs)
    return batches(decisions)[:len(eigs)], [d.growth for d in decisions[1:]]


def test_scenario_monotone_halving_decay_grows_at_every_probe():
    trained, growths = _scenario([64.0, 32.0, 16.0, 8.0, 4.0, 2.0, 1.0])
    # epoch 1 sets λ_ref = 64; each later λ is half of the last: curvature growths after epochs 2, 3, 4 reach
    # the cap 1024, and probing stops
    assert trained == [128, 128, 256, 512, 1024, 1024, 1024]
    assert growths == [None, "curvature", "curvature", "curvature", None, None, None]


def test_scenario_slow_decay_095_halves_only_after_14_epochs():
    eigs = [100 * 0.95 ** e for e in range(12)]
    trained, growths = _scenario(eigs)
    # 0.95ᵉ halves after 14 epochs (0.95¹⁴ = 0.488): never within 12, so every growth is the fallback's
    # (after epochs 3, 6, 9) and λ_ref stays at the first probe's 100
    assert trained == [128, 128, 128, 256, 256, 256, 512, 512, 512, 1024, 1024, 1024]
    assert growths == [None, None, "fallback"] * 3 + [None] * 3


def test_scenario_noisy_lambda_grows_on_a_low_reading():
    trained, growths = _scenario([50.0, 60.0, 24.0, 30.0, 11.0, 40.0, 9.0, 12.0])
    # λ_ref 50: 60 no; 24 ≤ 25 → curvature after epoch 3 (the fallback's epoch: 0 early), λ_ref 24;
    # 30 no; 11 ≤ 12 → curvature after epoch 5 (1 early), λ_ref 11; 40 no; 9 > 5.5 no; 12 no, and epoch 8 is
    # the third since the last growth → fallback with λ_ref 11 kept
    assert trained == [128, 128, 128, 256, 256, 512, 512, 512]
    assert growths == [None, None, "curvature", None, "curvature", None, None, "fallback"]


def test_scenario_rise_after_each_growth():
    """λ rises for an epoch after each growth (measured: docs/benchmarks.md, probe_noise). With λ_ref kept at a
    fallback growth, the rise does not move the reference; re-anchored, it would."""
    eigs = [72.0, 37.0, 27.0, 37.0, 33.0, 17.0, 25.0, 18.0, 10.0, 13.0]
    trained, growths = _scenario(eigs)
    # λ_ref 72: 37 > 36; 27 ≤ 36 → curvature after epoch 3 (the fallback's epoch), λ_ref 27; 37 no; 33 no;
    # 17 > 13.5 but the third epoch → fallback (λ_ref 27 kept); 25 no; 18 no; 10 ≤ 13.5 → curvature after epoch 9
    # (the fallback's epoch too), λ_ref 10; 13 no
    assert trained == [128, 128, 128, 256, 256, 256, 512, 512, 512, 1024]
    assert growths == [None, None, "curvature", None, None, "fallback", None, None, "curvature", None]


def test_scenario_constant_lambda_grows_by_the_fallback_only():
    trained, growths = _scenario([20.0] * 12)
    assert trained == [128, 128, 128, 256, 256, 256, 512, 512, 512, 1024, 1024, 1024]
    assert growths == [None, None, "fallback"] * 3 + [None] * 3


def test_scenario_nan_first_probe_defers_the_reference():
    trained, growths = _scenario([float("nan"), 40.0, 20.0, 9.0, 30.0])
    # the NaN is ignored (no λ_ref); 40 becomes λ_ref; 20 ≤ 20 → curvature after epoch 3 (λ_ref 20);
    # 9 ≤ 10 → curvature after epoch 4; 30 > 4.5
    assert trained == [128, 128, 128, 256, 512]
    assert growths == [None, None, "curvature", "curvature", None]


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


@pytest.mark.parametrize("policy, epochs, lambdas", [
    ({"duration": 100}, 10, [8.0, 4.0, 2.0, 3.0, 3.0, 0.5, 0.1]),
    ({"duration": 2, "growth": 4, "max_global_batch": 4096}, 12, [8.0] * 11),
    ({"name": "abs", "max_global_batch": 1024}, 6, [8.0, 4.0, 2.0, 1.0, 0.5]),
    ({"adv_ratio": 0.05, "adv_stop_frac": 0.8}, 10, [8.0, 4.0, 2.0, 1.0, 0.5, 0.25]),
])
def test_the_planners_fgsm_share_is_the_policys(policy, epochs, lambdas):
    """``attacked_share`` (what `absa plan` and the step-time model charge for FGSM) follows from the epoch and the
    batch alone; it must agree, epoch by epoch, with the fraction the policy itself decides."""
    config = make_config(policy, epochs=epochs)
    decisions = trajectory(config, lambdas)
    for epoch, decision in enumerate(decisions[:epochs], start=1):
        expected = num_adversarial(decision.adv_ratio, 128) / 128
        assert attacked_share(config, epoch, decision.global_batch_size) == expected, (epoch, decision)
    assert attacked_share(make_config(epochs=10), 1, 128) == 25 / 128  # 20% of 128, floored: 25 samples


def test_adversarial_stop_epoch_rounding():
    assert adv_stop_epoch(0.5, 90) == 45
    assert adv_stop_epoch(0.3, 10) == 3  # 0.3 × 10 = 3.0000000000000004 in floats
    assert adv_stop_epoch(0.5, 9) == 4  # the first floor(4.5) epochs, as the reference's `epoch >= epochs // 2`
    assert adv_stop_epoch(0.7, 10) == 7  # 0.7 × 10 = 6.999999999999999 in floats
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
                                "(policy.confirm=2); λ_ref is now 3.5"
    # after the growth λ_ref = 3.5 and the count restarts from zero
    assert batches(trajectory(config, [8.0, 3.0, 3.5, 1.0, 5.0, 1.0, 1.0])) == \
        [128, 128, 128, 256, 256, 256, 256, 512]


def test_a_fallback_growth_restarts_the_confirm_count():
    """The drop in the fallback's epoch counts towards nothing after it: the next drop is 1 of 2 again."""
    decisions = trajectory(make_config({"name": "abs", "confirm": 2, "duration": 3}), [8.0, 9.0, 3.0, 3.0, 3.0])
    assert batches(decisions) == [128, 128, 128, 256, 256, 512]
    assert decisions[3].reason.startswith("batch 128→256: 3 epochs without growth")
    assert "on 1 of policy.confirm=2 probes (epoch 1 of policy.duration=3)" in decisions[4].reason
    assert decisions[5].reason.startswith("batch 256→512: λ_max 3 ≤ λ_ref 8 / policy.eig_ratio=2 on 2 probes in a row")


def test_confirm_count_survives_an_unprobed_epoch():
    policy = make_policy(make_config({"name": "abs", "confirm": 2}))
    policy.observe(EpochMeasurements(1, 90, 8.0))
    policy.observe(EpochMeasurements(2, 90, 3.0))
    assert policy.observe(EpochMeasurements(3, 90, None)).global_batch_size == 128
    assert policy.observe(EpochMeasurements(4, 90, 3.0)).global_batch_size == 256


# --------------------------------------------------------------------------------------------- recheck

def test_recheck_grows_only_when_every_reading_shows_the_drop():
    """policy.recheck=1: a probe at or below λ_ref / 2 is probed once more on new samples before the decision; the
    batch grows only if that reading shows the drop too, and λ_ref becomes the two readings' mean."""
    config = make_config({"name": "abs", "recheck": 1})
    # epoch 2: 3 ≤ 8 / 2, its recheck 5 > 4: kept; epoch 3: 3.5 and 2.5 both ≤ 4: grows, λ_ref = 3
    decisions = trajectory(config, [8.0, (3.0, 5.0), (3.5, 2.5), (1.4, 1.2), 1.5])
    assert batches(decisions) == [128, 128, 128, 256, 512, 512]
    assert decisions[2].reason == ("batch 128 kept: λ_max 3 ≤ λ_ref 8 / policy.eig_ratio=2, but a recheck of new "
                                   "samples read 5 > λ_ref 8 / 2 (policy.recheck=1): no drop (epoch 2 of "
                                   "policy.duration=10)")
    assert decisions[3].reason == ("batch 128→256: λ_max 3.5 ≤ λ_ref 8 / policy.eig_ratio=2 and on 1 recheck of "
                                   "new samples (2.5; policy.recheck=1); λ_ref is now 3 (the mean of this epoch's 2 "
                                   "readings)")
    assert decisions[4].growth == CURVATURE and decisions[4].reason.endswith("λ_ref is now 1.3 (the mean of this "
                                                                             "epoch's 2 readings)")
    assert not decisions[5].grew  # 1.5 > 1.3 / 2: no recheck, no growth


def test_recheck_is_asked_only_while_every_reading_shows_the_drop():
    policy = make_policy(make_config({"name": "abs", "recheck": 2}))
    assert not policy.wants_recheck([8.0])  # the first probe only sets λ_ref
    policy.observe(EpochMeasurements(1, 90, 8.0))
    assert not policy.wants_recheck([4.1])  # no drop: nothing to check
    assert policy.wants_recheck([4.0]) and policy.wants_recheck([4.0, 1.0])  # 4 ≤ 8 / 2
    assert not policy.wants_recheck([4.0, 4.5])  # the first recheck did not show it: the second is not needed
    assert not policy.wants_recheck([4.0, 1.0, 1.0])  # both rechecks ran
    assert not policy.wants_recheck([float("nan")]) and not policy.wants_recheck([4.0, float("nan")])
    assert not make_policy(make_config({"name": "abs"})).wants_recheck([1.0])  # recheck=0: the paper's rule
    assert not make_policy(make_config({"name": "fixed"})).wants_recheck([1.0])


def test_recheck_replays_with_the_readings_the_controller_would_take():
    """A number scripts every reading of its epoch; a drop with fewer rechecks than policy.recheck is refused."""
    config = make_config({"name": "abs", "recheck": 2}, epochs=12)
    assert batches(trajectory(config, [8.0, 4.0, 2.0])) == [128, 128, 256, 512]
    with pytest.raises(ValueError, match="scripts none"):
        trajectory(config, [8.0, (4.0, 3.0)])
    policy = make_policy(config)
    policy.observe(EpochMeasurements(1, 12, 8.0))
    with pytest.raises(ValueError, match="1 of policy.recheck=2"):
        policy.observe(EpochMeasurements(2, 12, 4.0, (3.0,)))
    assert schedule_bounds(config).fastest == schedule_bounds(make_config({"name": "abs"}, epochs=12)).fastest


def test_recheck_replay_refuses_a_script_the_controller_could_not_have_taken():
    config = make_config({"name": "abs", "recheck": 1})
    with pytest.raises(ValueError, match="scripts 3 readings but the policy took 2"):
        trajectory(config, [8.0, (3.0, 3.0, 3.0)])
    with pytest.raises(ValueError, match="scripts 2 readings but the policy took 1"):
        trajectory(config, [8.0, (5.0, 3.0)])  # 5 > 8 / 2: no recheck was taken
    with pytest.raises(ValueError, match="empty tuple"):
        trajectory(config, [8.0, ()])


@pytest.mark.parametrize("bad", [float("nan"), float("-inf"), float("inf")])
def test_a_non_finite_recheck_counts_as_not_probed(bad):
    """Like a non-finite probe: no growth, policy.confirm's count kept, λ_ref never set from it (a -inf recheck
    must not make λ_ref -inf, nor pass as a drop)."""
    for recheck, script in ((1, (3.0, bad)), (2, (3.0, bad)), (2, (3.0, 3.0, bad))):
        config = make_config({"name": "abs", "recheck": recheck, "confirm": 2})
        decisions = trajectory(config, [8.0, (3.0,) * (1 + recheck), script, (3.0,) * (1 + recheck)])
        assert batches(decisions) == [128, 128, 128, 128, 256], (recheck, script)
        assert f"but a recheck of new samples read {bad} (not finite): counted as not probed, λ_ref 8" \
            in decisions[3].reason
        assert "on 1 of policy.confirm=2 probes" in decisions[2].reason
        assert decisions[4].growth == CURVATURE
        assert decisions[4].reason.endswith(f"λ_ref is now 3 (the mean of this epoch's {1 + recheck} readings)")


def test_recheck_reasons_print_the_digits_their_comparison_needs():
    config = make_config({"name": "abs", "recheck": 1})
    decisions = trajectory(config, [10.0, (3.0, 5.004)])  # at 3 digits it would read "5 > λ_ref 10 / 2"
    assert "a recheck of new samples read 5.004 > λ_ref 10 / 2" in decisions[2].reason
    decisions = trajectory(config, [9.9904, (3.0, 4.9951)])  # at 3 digits "5", above the shown λ_ref 9.99 / 2
    assert decisions[2].grew and "λ_ref 9.99 / policy.eig_ratio=2 and on 1 recheck of new samples (4.995; " \
        "policy.recheck=1)" in decisions[2].reason
    # one count of digits for λ_ref and every reading: 4.997 ≤ 9.99 / 2 would read false
    decisions = trajectory(config, [9.9949, (3.0, 4.9974)])
    assert decisions[2].grew and "λ_max 3 ≤ λ_ref 9.995 / policy.eig_ratio=2 and on 1 recheck of new samples " \
        "(4.997; policy.recheck=1)" in decisions[2].reason


def test_a_later_recheck_that_fails_refutes_the_drop():
    config = make_config({"name": "abs", "recheck": 2})
    decisions = trajectory(config, [8.0, (3.0, 3.0, 5.0), (3.0, 3.5, 2.5)])
    assert batches(decisions) == [128, 128, 128, 256]
    assert "but a recheck of new samples read 5 > λ_ref 8 / 2 (policy.recheck=2): no drop" in decisions[2].reason
    assert decisions[3].reason.endswith("(3.5, 2.5; policy.recheck=2); λ_ref is now 3 (the mean of this epoch's 3 "
                                        "readings)")
    policy = make_policy(config)
    policy.observe(EpochMeasurements(1, 90, 8.0))
    with pytest.raises(ValueError, match="3 of policy.recheck=2"):  # more rechecks than asked for
        policy.observe(EpochMeasurements(2, 90, 3.0, (3.0, 3.0, 3.0)))


def test_a_non_finite_recheck_at_the_fallback_names_lambda_ref_once():
    config = make_config({"name": "abs", "recheck": 1, "duration": 2})
    decisions = trajectory(config, [8.0, (3.0, float("nan"))])
    assert decisions[2].growth == FALLBACK and decisions[2].reason == (
        "batch 128→256: 2 epochs without growth (policy.duration=2); λ_max 3 ≤ λ_ref 8 / policy.eig_ratio=2, but a "
        "recheck of new samples read nan (not finite): counted as not probed; λ_ref 8 kept (a fallback growth leaves "
        "it)")


def test_recheck_composes_with_confirm_and_fallback():
    """A probe whose recheck fails is not a drop: it resets policy.confirm's count; the fallback leaves λ_ref."""
    config = make_config({"name": "abs", "recheck": 1, "confirm": 2, "duration": 4})
    decisions = trajectory(config, [8.0, (3.0, 3.0), (3.0, 9.0), (3.0, 3.0), (3.0, 3.0)])
    assert batches(decisions) == [128, 128, 128, 128, 256, 256]
    assert decisions[4].growth == FALLBACK and "λ_ref 8 kept" in decisions[4].reason
    assert "on 1 of policy.confirm=2 probes" in decisions[4].reason
    assert decisions[5].growth is None and "on 1 of policy.confirm=2 probes" in decisions[5].reason


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
    assert [policy.lr(p) for p in (0.0, 29.9, 30.0, 60.0, 85.0)] == pytest.approx(
        [0.1, 0.1, 0.02, 0.004, 0.0008])


def test_fixed_large_goyal_warmup():
    # cap 1024 = 8 × 128: target LR 0.8; warm-up from optim.lr = 0.1 over 5 epochs (optim.warmup_epochs = 0)
    config = make_config({"name": "fixed-large", "max_global_batch": 1024}, optim={"decay_epochs": [3, 30]})
    policy = make_policy(config)
    expected = {0.0: 0.1, 1.0: 0.24, 2.5: 0.45, 2.99: 0.1 + 0.7 * 2.99 / 5,
                3.0: (0.1 + 0.7 * 3 / 5) * 0.2, 5.0: 0.16, 10.0: 0.16, 30.0: 0.032}
    for progress, lr in expected.items():
        assert policy.lr(progress) == pytest.approx(lr), progress
    assert "over 5 epochs (optim.warmup_epochs=0 → 5, as Goyal et al.)" in policy.initial().reason
    # an explicit optim.warmup_epochs is used instead, and optim.warmup_start_factor does not apply
    explicit = make_policy(make_config({"name": "fixed-large", "max_global_batch": 1024},
                                       optim={"warmup_epochs": 2.0, "warmup_start_factor": 0.5}))
    assert [explicit.lr(p) for p in (0.0, 1.0, 2.0)] == pytest.approx([0.1, 0.45, 0.8])


# --------------------------------------------------------------------------------------------- LR

def test_lr_scales_linearly_with_the_batch_and_decays():
    policy = make_policy(make_config({"name": "abs"}))
    assert policy.lr(0.0) == pytest.approx(0.1)
    policy.observe(EpochMeasurements(1, 90, 8.0))
    policy.observe(EpochMeasurements(2, 90, 4.0))  # 256: LR ×2, the reference's jump (lr_ramp_epochs = 0)
    assert policy.lr(2.0) == pytest.approx(0.2)
    assert policy.lr(30.0) == pytest.approx(0.04)


def test_lr_ramp_after_growth_is_linear_in_epochs_with_decay_on_top():
    config = make_config({"name": "abs", "lr_ramp_epochs": 2.0}, optim={"decay_epochs": [3]})
    policy = make_policy(config)
    policy.observe(EpochMeasurements(1, 90, 8.0))
    decision = policy.observe(EpochMeasurements(2, 90, 4.0))  # 128 → 256 after epoch 2
    assert decision.reason.endswith("LR ramps to its new value over policy.lr_ramp_epochs=2")
    # from 0.1 (the LR at 128) to 0.2 over 2 epochs, from the growth's epoch boundary (progress 2.0)
    assert [policy.lr(2.0 + t) for t in (0.0, 0.2, 1.0, 1.8, 2.0, 3.0)] == pytest.approx(
        [0.1, 0.11, 0.15 * 0.2, 0.19 * 0.2, 0.2 * 0.2, 0.2 * 0.2])  # × 0.2 from epoch 3 on (step decay)
    # the ramp is part of the saved state: a restored policy continues it
    restored = make_policy(config)
    restored.load_state_dict(json.loads(json.dumps(policy.state_dict())))
    assert restored.lr(2.6) == pytest.approx(0.13)


def test_lr_ramp_continues_from_an_unfinished_ramp():
    config = make_config({"name": "abs", "lr_ramp_epochs": 2.0})
    policy = make_policy(config)
    policy.observe(EpochMeasurements(1, 90, 8.0))
    policy.observe(EpochMeasurements(2, 90, 4.0))  # 128 → 256, ramp 0.1 → 0.2 from epoch 2
    policy.observe(EpochMeasurements(3, 90, 2.0))  # mid-ramp (0.15) → 512: ramp 0.15 → 0.4 from epoch 3
    assert policy.lr(3.0) == pytest.approx(0.15)
    assert policy.lr(4.0) == pytest.approx(0.275)
    assert policy.lr(5.0) == pytest.approx(0.4)


def test_lr_ramp_after_a_fallback_growth_too():
    config = make_config({"name": "abs", "duration": 1, "lr_ramp_epochs": 1.0})
    policy = make_policy(config)
    assert policy.observe(EpochMeasurements(1, 90, 8.0)).growth == "fallback"
    assert [policy.lr(1.0 + t) for t in (0.0, 0.5, 1.0)] == pytest.approx([0.1, 0.15, 0.2])


# --------------------------------------------------------------------------------------------- state

def test_state_round_trips_through_json_and_continues_identically():
    config = make_config({"confirm": 2, "duration": 4, "max_global_batch": 2048, "lr_ramp_epochs": 1.5}, epochs=20)
    eigs = [8.0, 3.0, 3.5, 1.0, 5.0, 1.0, 1.0, 0.2, 0.2, 0.2, 0.1, 0.01]
    straight = make_policy(config)
    reference = [straight.observe(EpochMeasurements(e, 20, eig)) for e, eig in enumerate(eigs, start=1)]
    for cut in range(1, len(eigs)):
        first = make_policy(config)
        for e, eig in enumerate(eigs[:cut], start=1):
            first.observe(EpochMeasurements(e, 20, eig))
        saved = json.dumps(first.state_dict())
        second = make_policy(config)
        second.load_state_dict(json.loads(saved))
        assert second.state == first.state
        assert second.lr(cut + 0.5) == first.lr(cut + 0.5)
        rest = [second.observe(EpochMeasurements(e, 20, eig)) for e, eig in enumerate(eigs[cut:], start=cut + 1)]
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
        ({"duration": 2}, [8.0] * 60),  # to the last epoch
    ]
    for policy_fields, eigs in scripts:
        for decision in trajectory(make_config(policy_fields, epochs=60), eigs):
            assert any(f in decision.reason for f in ("policy.", "batch.global_batch_size", "epochs=")), decision.reason
    adv_stop = trajectory(make_config({"duration": 100}, epochs=4), [8.0, 8.0])[2]
    assert "policy.adv_stop_frac=0.5" in adv_stop.reason


def test_policy_modules_are_pure():
    """No clock, no torch: a decision depends on its inputs only (the folder's layer is checked by test_layers)."""
    for source in (Path(__file__).resolve().parent.parent / "absa_cli" / "decide").glob("*.py"):
        imported: set[str] = set()
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported.add(node.module or "")
        outside = {name for name in imported if not name.startswith("absa_cli.")}
        assert outside <= {"__future__", "dataclasses", "math", "typing", ""}, (source.name, outside)
        inside = {name for name in imported if name.startswith("absa_cli.")}
        assert all(name.startswith("absa_cli.decide.") or name in ("absa_cli.config", "absa_cli.errors")
                   for name in inside), (source.name, inside)


@pytest.mark.parametrize("eig, reads", [
    (5.004, "batch 128 kept: λ_max 5.004 > λ_ref 10 / policy.eig_ratio=2"),  # was "λ_max 5 > λ_ref 10 / ..."
    (5.0, "batch 128→256: λ_max 5 ≤ λ_ref 10 / policy.eig_ratio=2"),
    (35.5, "batch 128 kept: λ_max 35.5 > λ_ref 10 / policy.eig_ratio=2"),  # 3 digits where they suffice
])
def test_a_reason_prints_the_digits_its_comparison_needs_to_read_true(eig, reads):
    policy = make_policy(make_config())
    policy.observe(EpochMeasurements(1, 90, 10.0))
    assert policy.observe(EpochMeasurements(2, 90, eig)).reason.startswith(reads)
