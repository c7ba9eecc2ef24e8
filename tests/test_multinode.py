"""absa across two Ray nodes started by hand (`ray start --head`, `ray start --address`), each with its own CPU
slot, inside a loopback-only user/net/pid sandbox (tests/ray_sandbox.py): a whole node dies in the middle of an
epoch and the run re-forms live on the other, every sample applied once; a node joins during a run and the run
grows onto it (both on the same two nodes, in one sandbox). Every process is stopped through its own id; the
sandbox's PID namespace reaps anything left."""

from __future__ import annotations

import pytest

from conftest import audited_epochs

pytestmark = pytest.mark.slow


def _check_every_sample_once(audit, epochs: int) -> None:
    """1,000 samples at a global batch of 32: 31 full steps (992 samples) per epoch, the last 8 dropped."""
    audited = audited_epochs(audit)
    assert sorted(audited) == list(range(epochs))
    for epoch, (applied, dropped) in audited.items():
        assert len(applied) == 992 and len(dropped) == 8, epoch
        assert sorted(applied + dropped) == list(range(1000)), f"epoch {epoch}: a sample lost or repeated"


@pytest.fixture(scope="module")
def two_nodes(sandboxes):
    """Both two-node scenarios in one sandbox, on one head: a node joins a run, then a node dies under another."""
    return sandboxes.result("node_added_then_lost")


@pytest.mark.sandbox("node_added_then_lost")
def test_a_node_lost_mid_epoch_the_run_reforms_live_on_the_other(two_nodes):
    work, results = two_nodes
    result = results["lost"]
    log = result["log"]
    assert result["rc"] == 0 and result["status"] == ["finished"], log
    assert result["second_node_pids"] and not result["second_node_survivors"]  # the second node really died
    records = result["records"]
    (failure,) = [r for r in records if r["kind"] == "failure"]
    assert failure["epoch"] == 2 and 0 < failure["samples_seen"] < 992  # mid-epoch
    assert (failure["from_workers"], failure["to_workers"], failure["lost_workers"]) == (2, 1, 1)
    # the record names the worker that was on the dead node, not the survivor
    (lost,) = failure["lost"]
    lost_pid = int(lost.split("pid ")[1].split()[0])
    assert lost_pid in result["second_node_pids"] and lost_pid in result["workers"], (lost, result)
    assert not [r for r in records if r["kind"] == "restart"]  # live, not from a checkpoint
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["samples_seen"] for r in epochs] == [992, 992, 992]
    # epoch 2 ran on both nodes, then on the head alone, accumulating
    assert [(g["num_workers"], g["grad_accum_steps"]) for g in epochs[1]["geometries"]] == [(2, 1), (1, 2)]
    _check_every_sample_once(work / "lost" / "audit", 3)


@pytest.mark.sandbox("node_added_then_lost")
def test_a_node_added_mid_run_is_used(two_nodes):
    work, results = two_nodes
    result = results["added"]
    assert result["rc"] == 0 and result["status"] == ["finished"], result["log"]
    records = result["records"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    first = epochs[0]["geometries"][0]
    assert (first["num_workers"], first["grad_accum_steps"]) == (1, 2)  # the head's one slot, accumulating
    grown = [r for r in records if r["kind"] == "resize"]
    assert [(r["from_workers"], r["to_workers"], r["reason"]) for r in grown] == [(1, 2, "capacity")]
    # the run ends on both nodes (when the growth lands depends on how fast the node starts: any chunk boundary)
    last = epochs[-1]["geometries"]
    assert last[-1]["num_workers"] == 2 and last[-1]["grad_accum_steps"] == 1 and sum(g["steps"] for g in last) == 31
    # the second worker is a process of the node that joined
    (newcomer,) = [pid for pid in result["workers"] if pid in result["second_node_pids"]]
    assert len(result["workers"]) == 2 and newcomer
    _check_every_sample_once(work / "added" / "audit", 8)


@pytest.mark.sandbox("autoscaling")
def test_on_an_autoscaling_cluster_the_run_asks_for_nodes_and_grows_onto_them(sandboxes):
    """Ray's simulated autoscaling cluster: a head of one CPU and a node type of one CPU. The run wants two workers:
    it starts on the head, asks the autoscaler for two, and grows onto the node it adds."""
    work, result = sandboxes.result("autoscaling")
    log = result["log"]
    assert result["rc"] == 0 and result["status"] == ["finished"], log
    records = result["records"]
    first = [r for r in records if r["kind"] == "geometry"][0]
    assert first["num_workers"] == 1 and "the cluster offers 1 of the 2 wanted" in first["reason"]
    demands = [r for r in records if r["kind"] == "demand"]
    assert [d["workers"] for d in demands] == [2, 0], demands  # asked for two, withdrawn once the group had them
    (resize,) = [r for r in records if r["kind"] == "resize"]
    assert (resize["from_workers"], resize["to_workers"], resize["reason"]) == (1, 2, "capacity")
    # the newcomer runs on a node the autoscaler launched (the fake provider's node ids are ffff…)
    assert resize["placed"][0].endswith("(ffffffff)"), resize
    assert result["alive_nodes_at_end"] >= 2
    assert "asked the autoscaler for 2 workers" in log
    _check_every_sample_once(work / "audit", 3)
