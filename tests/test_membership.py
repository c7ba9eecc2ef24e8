"""The membership decision (decide/membership.py), pure: how many workers for a batch given what the cluster
offers, how many to start ahead for the policy's next batch, and why — worked out by hand; and the config-time
refusal of a schedule that splits into tiny micro-batches (one line, exit 2, in every command that trains or plans).
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from absa_cli import config as config_mod
from absa_cli.cli.app import app
from absa_cli.config import ConfigError
from absa_cli.decide.membership import check_geometries, decide_membership
from absa_cli.decide.policy import make_policy, reachable_batches

from conftest import assert_user_error


def test_as_few_workers_as_carry_the_batch():
    m = decide_membership(256, None, capacity=8, current=1, max_workers=8, per_worker_max=128)
    assert (m.num_workers, m.geometry.grad_accum_steps, m.prestart) == (2, 1, 0)
    assert m.reason == "2 workers (1→2) for batch 256: batch.per_worker_max=128 each"


def test_the_cap_and_the_capacity_are_named_when_they_decide():
    capped = decide_membership(1024, None, capacity=8, current=4, max_workers=4, per_worker_max=128)
    assert (capped.num_workers, capped.geometry.grad_accum_steps) == (4, 2)
    assert capped.reason == "4 workers for batch 1024: at most cluster.max_workers=4"
    short = decide_membership(1024, None, capacity=2, current=4, max_workers=8, per_worker_max=128)
    assert (short.num_workers, short.geometry.grad_accum_steps) == (2, 4)
    assert short.reason == ("2 workers (4→2) for batch 1024: the cluster offers 2 of the 8 wanted; accumulation "
                            "keeps the batch exact")


def test_workers_for_the_next_batch_are_readied_only_when_it_needs_more():
    ahead = decide_membership(128, 256, capacity=4, current=1, max_workers=4, per_worker_max=128)
    assert ahead.prestart == 2 and ahead.reason.endswith("; 2 workers readied for the policy's next batch 256")
    capped = decide_membership(512, 1024, capacity=4, current=4, max_workers=4, per_worker_max=128)
    assert capped.prestart == 0  # 1024 still runs on the 4 workers cluster.max_workers allows
    assert decide_membership(128, None, capacity=4, current=1, max_workers=4, per_worker_max=128).prestart == 0


def test_the_target_is_what_the_batch_or_the_next_one_wants_where_there_is_room():
    short = decide_membership(1024, None, capacity=2, current=4, max_workers=8, per_worker_max=128)
    assert (short.num_workers, short.wanted, short.target) == (2, 8, 8)  # the cluster offers 2 of the 8 wanted
    ahead = decide_membership(128, 256, capacity=4, current=1, max_workers=4, per_worker_max=128)
    assert (ahead.wanted, ahead.prestart, ahead.target) == (1, 2, 2)  # the next batch's group, ahead
    whole = decide_membership(256, None, capacity=8, current=1, max_workers=8, per_worker_max=128)
    assert (whole.num_workers, whole.target) == (2, 2)  # the geometry has all it wants


def test_no_capacity_at_all_is_an_error_not_a_geometry():
    with pytest.raises(ValueError, match="no worker can start"):
        decide_membership(128, None, capacity=0, current=0, max_workers=4, per_worker_max=128)


def test_the_policy_says_which_batch_it_may_grow_to_next():
    config = config_mod.load("quickstart", ["epochs=3", "policy.max_global_batch=256"])
    policy = make_policy(config)
    assert policy.next_global_batch() == 256
    assert make_policy(config_mod.load("quickstart", ["policy.name=fixed"])).next_global_batch() is None
    assert reachable_batches(config) == [128, 256]
    assert reachable_batches(config_mod.load("quickstart", ["policy.max_global_batch=1000"])) == [128, 256, 512, 1000]


def test_a_prime_batch_is_refused_at_config_time():
    config = config_mod.load("quickstart", ["batch.global_batch_size=127", "policy.max_global_batch=127",
                                            "batch.per_worker_max=32", "cluster.max_workers=4"])
    with pytest.raises(ConfigError, match=r"global batch 127 splits badly: on 1 worker it needs micro-batches "
                                          r"of 1 \(127 accumulation steps\) where batch.per_worker_max=32 allows 32"):
        check_geometries(config, reachable_batches(config))
    fine = config_mod.load("quickstart", ["policy.max_global_batch=1000", "cluster.max_workers=7"])
    check_geometries(fine, reachable_batches(fine))  # 1000 = 5 × 100 × 2 on 7 workers: fine


@pytest.mark.parametrize("command", [["plan", "quickstart"], ["train", "quickstart", "--local"]])
def test_every_command_refuses_it_in_one_line(command, tmp_path):
    result = CliRunner().invoke(app, [*command, "batch.global_batch_size=127", "policy.max_global_batch=127",
                                      "batch.per_worker_max=32",
                                      "--runs-dir" if command[0] == "train" else "--json",
                                      *([str(tmp_path)] if command[0] == "train" else [])])
    assert_user_error(result, "global batch 127 splits badly", "small factors")
    assert not any(tmp_path.iterdir())


def test_resume_refuses_such_a_run_in_one_line_and_keeps_other_flag_errors_plain(tmp_path):
    """A run whose saved config this version refuses cannot continue: one line saying so. A wrong flag on a good run
    is the flag's own line, not a verdict on the run."""
    from absa_cli.run.rundir import RunDir

    good = RunDir.create(tmp_path, config_mod.load("quickstart"))
    good.write_info(status="interrupted")
    flags = CliRunner().invoke(app, ["resume", good.id, "--local", "--max-gpus", "2", "--runs-dir", str(tmp_path)])
    assert_user_error(flags, "--local trains on one worker")
    assert "cannot continue" not in flags.stderr
    bad = RunDir.create(tmp_path, config_mod.load("quickstart"))
    bad.config_path.write_text(bad.config_path.read_text().replace("global_batch_size: 128", "global_batch_size: 127")
                               .replace("per_worker_max: 128", "per_worker_max: 32")
                               .replace("max_global_batch: 1024", "max_global_batch: 127"))
    bad.write_info(status="interrupted")
    result = CliRunner().invoke(app, ["resume", bad.id, "--local", "--runs-dir", str(tmp_path)])
    assert_user_error(result, f"run {bad.id} cannot continue with this version of absa", "splits badly")
