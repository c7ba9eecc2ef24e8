"""The controller on a scripted worker group (tests/scripted_group.py): every recovery, restart, capacity and stop
path, each in milliseconds, checked against what must hold whatever happened — every sample position of every
epoch applied exactly once (the tail past the last full batch never), the records saying what happened, and the run
ending with the right outcome (status, exit code, message)."""

from __future__ import annotations

import io
import json
import signal
import time
from pathlib import Path

import pytest

from absa_cli import config as config_mod
from absa_cli.config import ConfigError
from absa_cli.driver.checkpoints import Checkpoints
from absa_cli.driver.controller import MAX_RESTARTS, Controller
from absa_cli.run.metrics import Console
from absa_cli.run.rundir import RunDir, Status

from scripted_group import Lose, LoseAll, NoRoom, ScriptedGroup

# 256 samples, batch 64 → 128 → 256 (the fallback grows it after every epoch), 32 per worker at most, 2 workers
BASE = ["epochs=3", "data.train_size=256", "batch.global_batch_size=64", "batch.per_worker_max=32",
        "policy.max_global_batch=256", "policy.name=abs", "policy.duration=1", "logging.chunk_steps=2",
        "cluster.max_workers=2", "checkpoint.keep_last=5"]


def _controller(tmp_path, group: ScriptedGroup, *overrides: str) -> tuple[Controller, RunDir, io.StringIO]:
    config = config_mod.load("quickstart", [*BASE, *overrides])
    run = RunDir.create(tmp_path / "runs", config)
    out = io.StringIO()
    return Controller(config, run, group, Console(stream=out, force_plain=True)), run, out


def _records(run: RunDir, kind: str) -> list[dict]:
    return run.records(kind)


def _assert_exactly_once(group: ScriptedGroup, run: RunDir) -> None:
    """Every epoch applied positions 0 … its last full batch once each, in order; the records agree."""
    for record in _records(run, "epoch"):
        epoch, batch = record["epoch"] - 1, record["global_batch_size"]
        applied = group.positions(epoch)
        assert applied == list(range(256 // batch * batch)), (epoch, applied)
        assert record["samples_seen"] == len(applied) and record["dropped_samples"] == 256 - len(applied)


@pytest.fixture(autouse=True)
def _fast():
    started = time.perf_counter()
    yield
    assert time.perf_counter() - started < 5.0, "a scripted controller test takes milliseconds, not seconds"


def test_the_group_for_the_policys_next_batch_is_started_ahead(tmp_path):
    group = ScriptedGroup(offered=2)
    controller, run, _ = _controller(tmp_path, group, "batch.per_worker_max=64")
    assert controller.train().status == Status.FINISHED
    assert [r["num_workers"] for r in _records(run, "epoch")] == [1, 2, 2]
    assert group.prepared == [2]  # during epoch 1 only: at 128 and 256 the group is at cluster.max_workers=2
    assert "2 workers readied for the policy's next batch 128" in _records(run, "geometry")[0]["reason"]
    # the autoscaler hears of it during epoch 1 and the request is withdrawn once the group has grown
    assert group.demanded == [2, 0]
    assert [(d["epoch"], d["workers"], d["reason"]) for d in _records(run, "demand")] == [
        (1, 2, "2 workers wanted for the policy's next batch 128; the group has 1"),
        (2, 0, "withdrawn: the group has the 2 workers it wants")]


@pytest.mark.parametrize("lost", [False, True])
def test_a_drop_is_rechecked_on_new_samples_before_the_decision(tmp_path, lost):
    """policy.recheck=1: after a probe showing the drop the controller probes once more (draw 1) and the policy
    decides on both readings; the records keep both. A worker lost during the recheck: the survivors run it again."""
    group = ScriptedGroup(offered=2, eigenvalues=[8.0, (3.0, 5.0), (3.0, 3.5), 1.0],
                          events={("probe", 3): Lose(1)} if lost else {})
    controller, run, _ = _controller(tmp_path, group, "epochs=4", "policy.duration=10", "policy.recheck=1")
    assert controller.train().status == Status.FINISHED
    epochs = _records(run, "epoch")
    assert [(r["eigenvalue"], r["eigenvalue_rechecks"], r["probe_hvps"]) for r in epochs] == \
        [(8.0, [], 1), (3.0, [5.0], 2), (3.0, [3.5], 2), (None, [], 0)]
    assert [r["global_batch_size"] for r in epochs] == [64, 64, 64, 128]
    assert [r["growth"] for r in epochs] == [None, None, "curvature", None]
    assert "but a recheck of new samples read 5 > λ_ref 8 / 2 (policy.recheck=1)" in epochs[1]["policy_reason"]
    assert epochs[2]["policy_reason"].endswith("λ_ref is now 3.25 (the mean of this epoch's 2 readings)")
    probes = [detail for method, detail in group.calls if method == "probe"]
    assert probes == [0, 1, (1, 1), *([(1, 1)] if lost else []), 2, (2, 1)]
    _assert_exactly_once(group, run)


def test_a_run_without_incident_grows_by_the_rule(tmp_path):
    group = ScriptedGroup(offered=2)
    controller, run, out = _controller(tmp_path, group)
    ending = controller.train()
    assert (ending.status, ending.exit_code) == (Status.FINISHED, 0) and ending.message.startswith("summary: 3 epochs")
    assert "since the resume" not in ending.message
    assert [r["global_batch_size"] for r in _records(run, "epoch")] == [64, 128, 256]
    assert [r["num_workers"] for r in _records(run, "epoch")] == [2, 2, 2]  # 64 = 2 × 32 from the start
    geometries = _records(run, "geometry")
    assert [g["grad_accum_steps"] for g in geometries] == [1, 2, 4]
    assert "2 workers for batch 64: batch.per_worker_max=32 each" in geometries[0]["reason"]
    assert "cluster.max_workers=2" in geometries[1]["reason"]
    _assert_exactly_once(group, run)
    assert [c for c in group.calls if c[0] == "resize"][0] == ("resize", 2)
    assert group.demanded == [] and not _records(run, "demand")  # the cluster offered all it was asked for


def test_a_worker_lost_mid_chunk_is_replaced_and_the_epoch_continues_at_the_exact_sample(tmp_path):
    group = ScriptedGroup(offered=2, drift=1.0, events={("train_chunk", 2): Lose(workers=1, steps_done=1)})
    controller, run, out = _controller(tmp_path, group)
    assert controller.train().status == Status.FINISHED
    (failure,) = _records(run, "failure")
    assert (failure["epoch"], failure["samples_seen"], failure["lost_workers"], failure["to_workers"]) == (1, 192, 1, 1)
    (replacement,) = [r for r in _records(run, "resize") if r["epoch"] == 1]  # the driver replaced it, live
    assert (replacement["from_workers"], replacement["to_workers"], replacement["reason"]) == (1, 2, "failure")
    kinds = [r["kind"] for r in run.records() if r["kind"] != "epoch"]
    assert kinds.index("failure") < kinds.index("resize")  # the failure first, then what the driver did about it
    assert _records(run, "epoch")[0]["updates"] == 4  # 2 + 1 before the loss + 1 after: each step counted once
    _assert_exactly_once(group, run)
    assert "lost 1 worker (rank 1, pid 1001 on node scripted: scripted: worker lost); 1 worker continues from " \
           "sample 192 of epoch 1" in out.getvalue()
    # the step applied before the loss counts in the epoch's train loss and accuracy, as it would without the loss
    # (the scripted loss and accuracy grow along the epoch, so leaving any step out shows)
    unharmed = ScriptedGroup(offered=2, drift=1.0)
    reference, reference_run, _ = _controller(tmp_path / "unharmed", unharmed)
    assert reference.train().status == Status.FINISHED
    for harmed, whole in zip(_records(run, "epoch"), _records(reference_run, "epoch"), strict=True):
        assert (harmed["train_loss"], harmed["train_acc"]) == pytest.approx((whole["train_loss"], whole["train_acc"]))


def test_without_room_for_a_replacement_the_survivor_accumulates(tmp_path):
    group = ScriptedGroup(offered=2, events={("train_chunk", 1): Lose(workers=1, steps_done=0)})
    group.hooks[("train_chunk", 1)] = lambda g: setattr(g, "offered", 1)  # the lost slot does not come back
    controller, run, _ = _controller(tmp_path, group, "epochs=1")
    assert controller.train().status == Status.FINISHED
    (failure,) = _records(run, "failure")
    assert failure["to_workers"] == 1 and not _records(run, "resize")
    assert _records(run, "geometry")[-1]["num_workers"] == 1 and _records(run, "geometry")[-1]["grad_accum_steps"] == 2
    _assert_exactly_once(group, run)


def test_a_worker_lost_at_the_epoch_boundary_is_retried_on_the_reformed_group(tmp_path):
    group = ScriptedGroup(offered=2, events={("evaluate", 1): Lose(workers=1), ("probe", 2): Lose(workers=1)})
    controller, run, _ = _controller(tmp_path, group)
    assert controller.train().status == Status.FINISHED
    assert [f["epoch"] for f in _records(run, "failure")] == [1, 2]
    assert group.methods().count("evaluate") == 4  # epoch 1 twice, then once per epoch
    assert [r["epoch"] for r in _records(run, "epoch")] == [1, 2, 3]  # one record per epoch, nothing retrained
    _assert_exactly_once(group, run)


def test_a_second_failure_during_recovery_restarts_from_the_last_checkpoint(tmp_path):
    # epoch 2 (one chunk of two steps of 128): a worker is lost after the first step, and starting its replacement
    # (the third resize: the start, epoch 2's, the replacement) loses the group
    group = ScriptedGroup(offered=2, events={("train_chunk", 3): Lose(workers=1, steps_done=1),
                                             ("resize", 3): LoseAll()})
    controller, run, out = _controller(tmp_path, group)
    assert controller.train().status == Status.FINISHED
    (restart,) = _records(run, "restart")
    assert (restart["checkpoint"], restart["epoch"], restart["samples_seen"]) == ("epoch-0001.pt", 2, 0)
    assert "restart" in out.getvalue() and "epoch-0001.pt" in out.getvalue()
    _assert_exactly_once(group, run)  # the steps applied before the loss were rewound with the checkpoint


def test_a_group_lost_again_and_again_stops_after_the_restart_cap(tmp_path):
    events = {("train_chunk", n): LoseAll() for n in range(3, 20)}  # from epoch 2 on, after epoch 1's checkpoint
    group = ScriptedGroup(offered=2, events=events)
    controller, run, _ = _controller(tmp_path, group)
    ending = controller.train()  # one line and the resume command, not a traceback (it was)
    assert (ending.status, ending.exit_code, ending.resumable) == (Status.FAILED, 1, True)
    assert ending.message.startswith(f"error: the worker group was lost {MAX_RESTARTS + 1} times (restarted after "
                                     f"each of the first {MAX_RESTARTS}); last: ")
    # each restart rewinds metrics.jsonl to its checkpoint: the earlier restart records are in the superseded file
    superseded = [json.loads(line) for line in run.superseded_path.read_text().splitlines()]
    assert len(_records(run, "restart") + [r for r in superseded if r["kind"] == "restart"]) == MAX_RESTARTS


def test_a_group_that_cannot_even_restart_counts_as_another_loss_and_is_restarted_again(tmp_path):
    """A GroupLost raised by the restart itself escaped as a traceback, outside the restart count (review)."""
    events = {("train_chunk", 3): LoseAll("scripted: gone"), ("restart", 1): LoseAll("scripted: re-form failed")}
    group = ScriptedGroup(offered=2, events=events)
    controller, run, _ = _controller(tmp_path, group)
    assert controller.train().status == Status.FINISHED
    (restart,) = _records(run, "restart")  # the failed attempt wrote none
    assert "re-form failed" in restart["reason"] and restart["checkpoint"] == "epoch-0001.pt"
    assert [c[0] for c in group.calls].count("restart") == 2
    _assert_exactly_once(group, run)


@pytest.mark.parametrize("lost_at", [2, 3])  # mid-epoch 1; epoch 2 (no checkpoint: every 2 epochs), batch grown
def test_a_group_lost_before_any_checkpoint_starts_over_from_the_seed(tmp_path, lost_at):
    """Before, a RuntimeError: a worker lost in epoch 1 (an OOM, a crash) ended the run with a traceback. Now the
    run starts again as it started (policy state, position, records) and ends as an uninterrupted one."""
    def run_with(events, folder):
        group = ScriptedGroup(offered=2, events=events)
        controller, run, out = _controller(tmp_path / folder, group, "checkpoint.every_epochs=2")
        assert controller.train().status == Status.FINISHED
        return group, run, out.getvalue()

    _, plain, _ = run_with({}, "plain")
    group, run, out = run_with({("train_chunk", lost_at): LoseAll("scripted: gone")}, "lost")
    (restart,) = _records(run, "restart")
    assert (restart["checkpoint"], restart["epoch"], restart["samples_seen"], restart["updates"]) == (None, 1, 0, 0)
    assert "restarted 2 workers from the start (no checkpoint was written yet)" in out
    assert "scripted: gone" in restart["reason"]
    fields = ("epoch", "global_batch_size", "samples_seen", "updates", "num_workers")
    assert [[r[f] for f in fields] for r in _records(run, "epoch")] == \
        [[r[f] for f in fields] for r in _records(plain, "epoch")]
    _assert_exactly_once(group, run)


def test_a_grow_the_cluster_cannot_start_falls_back_to_accumulation(tmp_path):
    # epoch 1 on one worker (capacity 1); then the cluster reports 2 but the newcomer fails to start
    group = ScriptedGroup(offered=1, events={("resize", 2): NoRoom("scripted: the newcomer died starting")})
    group.hooks[("evaluate", 1)] = lambda g: setattr(g, "offered", 2)
    controller, run, out = _controller(tmp_path, group, "batch.per_worker_max=64", "epochs=2")
    assert controller.train().status == Status.FINISHED
    assert [r["num_workers"] for r in _records(run, "epoch")] == [1, 1]
    assert _records(run, "epoch")[1]["grad_accum_steps"] == 2  # 128 = 1 × 64 × 2
    assert "asked for 2 workers, have 1 (scripted: the newcomer died starting)" in out.getvalue()
    assert not _records(run, "resize")
    _assert_exactly_once(group, run)


def test_capacity_that_appears_later_is_used_at_the_next_epoch(tmp_path):
    group = ScriptedGroup(offered=1)
    group.hooks[("probe", 2)] = lambda g: setattr(g, "offered", 2)  # a node joins during epoch 2's probe
    controller, run, _ = _controller(tmp_path, group)
    assert controller.train().status == Status.FINISHED
    assert [r["num_workers"] for r in _records(run, "epoch")] == [1, 1, 2]
    (resize,) = _records(run, "resize")
    assert (resize["epoch"], resize["from_workers"], resize["to_workers"]) == (3, 1, 2)
    assert "the cluster offers 1 of the 2 wanted" in _records(run, "geometry")[0]["reason"]
    assert group.demanded == [2, 0]  # asked for at the start, withdrawn when the second worker came
    assert [d["epoch"] for d in _records(run, "demand")] == [1, 3]
    _assert_exactly_once(group, run)


def test_a_growth_at_an_epoch_boundary_without_a_larger_batch_is_recorded_as_capacity(tmp_path):
    group = ScriptedGroup(offered=1)
    group.hooks[("evaluate", 1)] = lambda g: setattr(g, "offered", 2)  # a node joins at the end of epoch 1
    controller, run, _ = _controller(tmp_path, group, "policy.name=fixed", "epochs=2")
    assert controller.train().status == Status.FINISHED
    (resize,) = _records(run, "resize")
    assert (resize["epoch"], resize["to_workers"], resize["reason"]) == (2, 2, "capacity")
    assert [g["cause"] for g in _records(run, "geometry")] == ["policy", "capacity"]


@pytest.mark.parametrize("phase, checkpoint", [
    (("train_chunk", 2), "epoch-0000-sample-000000192.pt"),  # mid-epoch: after the step in progress
    (("evaluate", 1), "epoch-0001.pt"),  # at the boundary: the epoch finishes, its checkpoint is the stop's
    (("probe", 1), "epoch-0001.pt"),
    (("resize", 2), "epoch-0001.pt"),  # while the group forms for epoch 2: stops before any step of it
])
def test_a_stop_request_in_each_phase_ends_resumable_after_the_step_in_progress(tmp_path, phase, checkpoint):
    group = ScriptedGroup(offered=2)
    controller, run, _ = _controller(tmp_path, group)
    group.hooks[phase] = lambda g: controller.request_stop(signal.SIGTERM)
    ending = controller.train()
    assert (ending.status, ending.exit_code, ending.resumable) == (Status.INTERRUPTED, 128 + signal.SIGTERM, True)
    assert ending.message.startswith("interrupted by SIGTERM") and ending.message.endswith(f"checkpoint {checkpoint}")
    assert ending.fields["checkpoint"] == checkpoint and (run.checkpoints_dir / checkpoint).exists()
    stops = [c for c in group.calls if c[0] == "train_chunk"]
    assert all(epoch == 0 for _, (epoch, *_rest) in stops)  # nothing of epoch 2 was trained after the stop


@pytest.mark.parametrize("chunk, kept, files", [
    (3, "the last checkpoint, epoch-0001.pt, stands", ["epoch-0001.pt"]),  # epoch 2
    (1, "no checkpoint was written yet (a resume starts over)", []),  # epoch 1: it said "the last checkpoint stands"
])
def test_a_second_signal_aborts_and_says_what_is_left_to_resume_from(tmp_path, chunk, kept, files):
    group = ScriptedGroup(offered=2)
    controller, run, _ = _controller(tmp_path, group)

    def second_signal(g):
        controller.abort_signal = signal.SIGINT
        raise KeyboardInterrupt

    group.hooks[("train_chunk", chunk)] = second_signal
    ending = controller.train()
    assert (ending.status, ending.exit_code, ending.resumable) == (Status.INTERRUPTED, 130, True)
    assert ending.message == f"aborted; {kept}"
    assert sorted(p.name for p in run.checkpoints_dir.glob("*.pt")) == files
    # a resume aborted before it restored anything: the run's own checkpoints stand, untouched
    fresh = Checkpoints(run, 3, report=print, config=controller.config, training_set=lambda: {})
    assert fresh.kept() == ("the last checkpoint stands" if files else kept)


def test_divergence_is_an_outcome_with_no_checkpoint_of_the_diverged_weights(tmp_path):
    group = ScriptedGroup(offered=2, train_loss=float("nan"))
    controller, run, _ = _controller(tmp_path, group)
    ending = controller.train()
    assert (ending.status, ending.exit_code) == (Status.DIVERGED, 1)
    assert ending.message.startswith("error: training diverged: the training loss became nan by update 2")
    assert not list(run.checkpoints_dir.glob("*.pt"))


def test_a_damaged_checkpoint_on_resume_is_a_refusal_that_leaves_the_run_as_it_was(tmp_path):
    group = ScriptedGroup(offered=2)
    controller, run, _ = _controller(tmp_path, group)
    controller.train()
    (run.checkpoints_dir / "manifest.json").write_text("{not json")
    again = Controller(controller.config, run, ScriptedGroup(offered=2), Console(stream=io.StringIO()))
    ending = again.train(resume=True)
    assert (ending.status, ending.exit_code, ending.put_back) == (None, 2, True)
    assert ending.message.startswith("error: ") and not again.resumed


@pytest.mark.parametrize("now, says", [
    ({"num_train_samples": 250}, "has 250 samples now and had 256"),
    ({"num_train_samples": 300}, "has 300 samples now and had 256"),
    ({"files": "0123abcd"}, "names other files now than the 256 it named"),  # renamed, or a subset's folder changed
])
def test_a_resume_onto_another_training_set_is_refused_before_anything_changes(tmp_path, now, says):
    """The epoch's order is a permutation of the training set's indices: resumed mid-run on a set with files
    removed, added or renamed since (data.root moved to another copy), it would feed some samples twice and others
    never. The checkpoint keeps what the set was; a resume on another is refused in one line, the run as it was."""
    controller, run, _ = _controller(tmp_path, ScriptedGroup(offered=2, files="feedc0de"))
    controller.config.epochs = 1
    controller.train()
    controller.config.epochs = 3
    records = run.metrics_path.read_bytes()
    again = Controller(controller.config, run, ScriptedGroup(offered=2, **{"files": "feedc0de", **now}),
                       Console(stream=io.StringIO()))
    ending = again.train(resume=True)
    assert (ending.status, ending.exit_code, ending.put_back) == (None, 2, True)
    assert ending.message == (f"error: run {run.id}: its training set {says} when epoch-0001.pt was written (files "
                              f"added to, removed from or renamed in the dataset since?); resume with data.root=PATH "
                              f"naming the files it trained on, or start a new run")
    assert not again.resumed and run.metrics_path.read_bytes() == records
    same = Controller(controller.config, run, ScriptedGroup(offered=2, files="feedc0de"), Console(stream=io.StringIO()))
    assert same.train(resume=True).status == Status.FINISHED  # on the same set it goes on


def test_a_user_error_after_the_resume_restored_the_run_marks_it_failed(tmp_path):
    """Once the run is restored it has run again: a user error then (here the manifest damaged between two
    checkpoints, as a hand edit would) ends it failed, still resumable, not put back."""
    controller, run, _ = _controller(tmp_path, ScriptedGroup(offered=2))
    controller.config.epochs = 1
    controller.train()
    controller.config.epochs = 3
    again = Controller(controller.config, run, ScriptedGroup(offered=2), Console(stream=io.StringIO()))
    original = again.save_checkpoint

    def damaging():
        (run.checkpoints_dir / "manifest.json").write_text("{not json")
        return original()

    again.save_checkpoint = damaging
    ending = again.train(resume=True)
    assert again.resumed and (ending.status, ending.exit_code, ending.put_back) == (Status.FAILED, 2, False)


def test_a_batch_larger_than_the_training_set_is_refused_by_the_controller_itself(tmp_path):
    group = ScriptedGroup(offered=2, num_train_samples=200)  # epoch 3's batch of 256 would apply no step
    controller, run, _ = _controller(tmp_path, group)
    with pytest.raises(ConfigError, match="policy.max_global_batch=256 is larger than the 200 training samples"):
        controller.run_all()
    assert [r["epoch"] for r in _records(run, "epoch")] == [1, 2]


def test_every_record_field_is_documented_in_metrics_md(tmp_path):
    """A run with a failure, a replacement, growth, a request to the autoscaler and a stop-free end writes
    geometry, epoch, failure, resize and demand records; docs/metrics.md names each kind and every field they
    carry."""
    docs = (Path(__file__).resolve().parent.parent / "docs" / "metrics.md").read_text()
    group = ScriptedGroup(offered=2, events={("train_chunk", 2): Lose(workers=1, steps_done=1)})
    group.hooks[("train_chunk", 2)] = lambda g: setattr(g, "offered", 1)  # the lost slot is gone for a while
    group.hooks[("evaluate", 1)] = lambda g: setattr(g, "offered", 2)
    controller, run, _ = _controller(tmp_path, group)
    controller.train()
    records = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    assert {r["kind"] for r in records} == {"geometry", "epoch", "failure", "resize", "demand"}
    for record in records:
        assert f'`"kind": "{record["kind"]}"`' in docs, record["kind"]
        for field in record:
            assert f"`{field}`" in docs, (record["kind"], field)


def test_a_worker_lost_at_every_retry_of_a_boundary_call_restarts_from_the_checkpoint(tmp_path):
    events = {("evaluate", n): Lose(workers=1) for n in (2, 3, 4)}  # epoch 2's evaluation, three times
    group = ScriptedGroup(offered=3, events=events)
    controller, run, _ = _controller(tmp_path, group, "cluster.max_workers=3", "batch.per_worker_max=16")
    assert controller.train().status == Status.FINISHED
    (restart,) = _records(run, "restart")
    assert restart["checkpoint"] == "epoch-0001.pt" and "lost 3 times at the epoch boundary" in restart["reason"]
    _assert_exactly_once(group, run)


def test_a_replacement_at_the_boundary_is_a_resize_record_without_a_first_step(tmp_path):
    group = ScriptedGroup(offered=2, events={("probe", 1): Lose(workers=1)})
    controller, run, _ = _controller(tmp_path, group, "epochs=2")
    assert controller.train().status == Status.FINISHED
    (resize,) = _records(run, "resize")
    assert (resize["epoch"], resize["reason"], resize["first_step_s"]) == (1, "failure", None)


def test_a_stop_requested_before_a_replacement_ends_on_the_survivors(tmp_path):
    group = ScriptedGroup(offered=2, events={("train_chunk", 2): Lose(workers=1, steps_done=1)})
    controller, run, _ = _controller(tmp_path, group)
    group.hooks[("train_chunk", 2)] = lambda g: controller.request_stop(signal.SIGTERM)
    ending = controller.train()
    assert ending.status == Status.INTERRUPTED and ending.fields["checkpoint"] == "epoch-0000-sample-000000192.pt"
    assert not _records(run, "resize") and group.num_workers == 1  # nobody was started for a run that is ending


def test_a_worker_lost_while_the_stop_checkpoint_is_taken_is_retried(tmp_path):
    group = ScriptedGroup(offered=2, events={("state_dict", 1): Lose(workers=1)})
    controller, run, _ = _controller(tmp_path, group)
    group.hooks[("train_chunk", 1)] = lambda g: controller.request_stop(signal.SIGTERM)
    ending = controller.train()
    assert ending.status == Status.INTERRUPTED and (run.checkpoints_dir / ending.fields["checkpoint"]).exists()
    assert len(_records(run, "failure")) == 1


# ------------------------------------------------------------------------------------- capacity (issue 15)

class _FakeTime:
    """The GroupKeeper's clock and sleep: waiting for capacity takes no real time."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_capacity_that_appears_mid_epoch_is_used_at_the_next_chunk_and_the_epoch_says_so(tmp_path):
    group = ScriptedGroup(offered=1)
    group.hooks[("train_chunk", 1)] = lambda g: setattr(g, "offered", 2)  # a slot frees during the first chunk
    controller, run, out = _controller(tmp_path, group, "epochs=1")
    assert controller.train().status == Status.FINISHED
    (resize,) = _records(run, "resize")
    assert (resize["from_workers"], resize["to_workers"], resize["reason"]) == (1, 2, "capacity")
    (epoch,) = _records(run, "epoch")
    assert epoch["geometries"] == [{"num_workers": 1, "per_worker_batch_size": 32, "grad_accum_steps": 2, "steps": 2},
                                   {"num_workers": 2, "per_worker_batch_size": 32, "grad_accum_steps": 1, "steps": 2}]
    assert (epoch["num_workers"], epoch["grad_accum_steps"]) == (2, 1)  # the geometry it ended with
    assert [g["cause"] for g in _records(run, "geometry")] == ["policy", "capacity"]
    assert "(first step" in out.getvalue() and "; capacity)" in out.getvalue()
    _assert_exactly_once(group, run)


def test_a_lost_worker_is_replaced_as_soon_as_a_slot_frees_not_at_the_next_epoch(tmp_path):
    group = ScriptedGroup(offered=2, events={("train_chunk", 1): Lose(workers=1, steps_done=1)})
    group.hooks[("train_chunk", 1)] = lambda g: setattr(g, "offered", 1)  # the lost slot is gone for now ...
    group.hooks[("train_chunk", 2)] = lambda g: setattr(g, "offered", 2)  # ... and back during the next chunk
    controller, run, _ = _controller(tmp_path, group, "epochs=1", "logging.chunk_steps=1")
    assert controller.train().status == Status.FINISHED
    (failure,) = _records(run, "failure")
    assert failure["lost"] == ["rank 1, pid 1001 on node scripted"]
    (resize,) = _records(run, "resize")
    assert (resize["from_workers"], resize["to_workers"], resize["reason"]) == (1, 2, "capacity")
    (epoch,) = _records(run, "epoch")
    assert [(g["num_workers"], g["steps"]) for g in epoch["geometries"]] == [(2, 1), (1, 1), (2, 2)]
    _assert_exactly_once(group, run)


def test_with_no_capacity_the_run_waits_visibly_then_ends_in_one_line(tmp_path):
    group = ScriptedGroup(offered=0)
    controller, run, out = _controller(tmp_path, group, "cluster.start_timeout_s=65")
    fake = _FakeTime()
    controller.groups.clock, controller.groups.sleep = fake.clock, fake.sleep
    ending = controller.train()
    assert (ending.status, ending.exit_code) == (Status.FAILED, 2)
    assert ending.message == ("error: no worker could start within cluster.start_timeout_s=65 s: the scripted "
                              "cluster offers 0; free a slot or raise the timeout, then resume the run")
    lines = out.getvalue().splitlines()
    assert any("no worker can start: the scripted cluster offers 0; waiting" in line for line in lines)
    assert sum("still waiting" in line for line in lines) == 2  # at 30 s and 60 s
    assert fake.now == 65 and not group.applied  # the last poll ends at the deadline (it overshot by one, to 66)


def test_workers_that_die_starting_are_named_as_the_cause_not_missing_capacity(tmp_path):
    """Room on the cluster, but every worker fails in its constructor: the wait and the final line say why."""
    reason = "RayActorError: ValueError: the worker's own error"
    group = ScriptedGroup(offered=1, events={("resize", n): NoRoom(reason=reason) for n in range(1, 200)})
    controller, run, out = _controller(tmp_path, group, "cluster.start_timeout_s=65")
    fake = _FakeTime()
    controller.groups.clock, controller.groups.sleep = fake.clock, fake.sleep
    ending = controller.train()
    assert (ending.status, ending.exit_code) == (Status.FAILED, 2)
    assert ending.message.startswith(f"error: no worker could start within cluster.start_timeout_s=65 s (the last "
                                     f"start failed: {reason}): ")
    assert any(f"no worker can start (the last start failed: {reason})" in line for line in out.getvalue().splitlines())


def test_capacity_that_appears_while_waiting_starts_the_run(tmp_path):
    group = ScriptedGroup(offered=0)
    controller, run, out = _controller(tmp_path, group, "epochs=1")
    fake = _FakeTime()

    def sleep(seconds: float) -> None:
        fake.sleep(seconds)
        if fake.now >= 10:
            group.offered = 1

    controller.groups.clock, controller.groups.sleep = fake.clock, sleep
    assert controller.train().status == Status.FINISHED
    assert _records(run, "epoch")[0]["num_workers"] == 1 and 10 <= fake.now < 13
    # the workers get what is left of cluster.start_timeout_s (300 s) to start, not another 300 s
    assert group.start_limits == [300 - fake.now]
    # asked before waiting (batch 64 wants 2 × 32); one slot came, the request for two stands until the end
    assert group.demanded == [2]
    assert "asked the autoscaler for 2 workers (2 workers wanted for batch 64; the group has 0)" in out.getvalue()
    _assert_exactly_once(group, run)


def test_a_stop_request_while_waiting_for_capacity_ends_the_run_at_once(tmp_path):
    group = ScriptedGroup(offered=0)
    controller, run, _ = _controller(tmp_path, group)
    fake = _FakeTime()

    def sleep(seconds: float) -> None:
        fake.sleep(seconds)
        controller.request_stop(signal.SIGINT)

    controller.groups.clock, controller.groups.sleep = fake.clock, sleep
    ending = controller.train()
    assert (ending.status, ending.exit_code) == (Status.INTERRUPTED, 130) and fake.now < 5
    assert ending.message.endswith("nothing to checkpoint yet (a resume starts over)") and not group.applied
