"""Placement: which node each new worker gets (the pure choice), and the same on two real Ray nodes in a
loopback-only sandbox (tests/ray_sandbox.py): pack fills one node before the next, spread alternates, a resize adds
or removes one worker's placement group and never moves a survivor, and closing frees every slot. A node that
declares a GPU without a CUDA device is named in one line."""

from __future__ import annotations

import pytest

from absa_cli import config as config_mod
from absa_cli.cluster.placement import choose_nodes
from absa_cli.errors import UserError


def test_pack_fills_the_nodes_this_run_uses_first():
    # the run holds one worker on b; a has more room, but b still has a slot
    assert choose_nodes({"a": 4, "b": 1}, {"b": 1}, 3, "pack") == ["b", "a", "a"]
    # nothing held yet: the node with the most free slots, filled before the next
    assert choose_nodes({"a": 2, "b": 3}, {}, 4, "pack") == ["b", "b", "b", "a"]


def test_spread_puts_each_next_worker_where_this_run_has_fewest():
    assert choose_nodes({"a": 4, "b": 1, "c": 2}, {"a": 1}, 3, "spread") == ["c", "b", "a"]
    assert choose_nodes({"a": 2, "b": 2}, {}, 4, "spread") == ["a", "b", "a", "b"]


def test_workers_beyond_the_free_slots_go_anywhere():
    """No node with a slot: no node is named, Ray places the bundle where room appears (an autoscaler demand)."""
    assert choose_nodes({"a": 1, "b": 0}, {}, 3, "pack") == ["a", None, None]
    assert choose_nodes({}, {"a": 2}, 1, "spread") == [None]


def test_unknown_strategy_is_one_line():
    with pytest.raises(ValueError, match="unknown placement strategy 'tight'"):
        choose_nodes({"a": 1}, {}, 1, "tight")
    with pytest.raises(UserError, match="cluster.placement must be pack or spread, got 'tight'"):
        config_mod.load("quickstart", ["cluster.placement=tight"])


@pytest.fixture(scope="module")
def placed(sandboxes):
    return sandboxes.result("placement")[1]


@pytest.mark.slow
@pytest.mark.sandbox("placement")
def test_pack_and_spread_on_two_nodes_and_resizes_keep_survivors(placed):
    pack, spread = placed["pack"], placed["spread"]
    assert len(set(pack["two"])) == 1, pack  # both workers on one node (it has two slots)
    assert len(set(pack["three"])) == 2 and pack["three"][:2] == pack["two"]  # the third on the other node
    assert len(set(spread["two"])) == 2, spread  # one worker on each node
    for strategy in (pack, spread):
        assert strategy["survivors_kept"]  # 3 → 2 retired the newcomer; the first two kept their processes
        assert (strategy["held_three"], strategy["held_two"], strategy["held_after_close"]) == (3, 2, 0)


@pytest.mark.slow
@pytest.mark.sandbox("placement")
def test_a_node_declaring_a_gpu_without_cuda_is_named(placed):
    result = placed["gpu"]
    assert (result["resource"], result["device"]) == ("GPU", "cpu")  # a GPU slot, yet torch sees no CUDA device
    (line,) = result["first"]
    assert "declares GPUs to Ray but torch sees no CUDA device there" in line and "ray start --num-gpus 0" in line
    assert result["again"] == []  # said once
