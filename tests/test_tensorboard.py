"""`TensorBoardSink`: records written through it are read back from the event files with TensorBoard's own
`EventAccumulator` (the reader behind its scalar dashboard): values, tags and steps (cumulative SGD updates).
A missing tensorboard package is a one-line user error.
"""

from __future__ import annotations

import sys

import pytest

from absa_cli.run import tensorboard as tb
from absa_cli.errors import UserError


def _epoch(epoch: int, updates: int, **fields) -> dict:
    return {"kind": "epoch", "epoch": epoch, "updates": updates, "global_batch_size": 128, "num_workers": 1,
            "lr": 0.05, "test_acc": 0.5, "eigenvalue": None, "policy_reason": "batch 128 kept", **fields}


def _scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})  # 0: keep every point
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def test_records_become_scalars_at_their_update_count(tmp_path):
    sink = tb.TensorBoardSink(tmp_path)
    sink.write({"kind": "geometry", "epoch": 1, "global_batch_size": 128, "num_workers": 1})
    sink.write(_epoch(1, 63, eigenvalue=66.5, test_acc=0.25))
    sink.write({"kind": "resize", "epoch": 2, "from_workers": 1, "to_workers": 2, "actor_start_s": 0.5,
                "rendezvous_s": 0.25, "state_transfer_s": 0.125, "first_step_s": 0.75, "resize_s": 0.875})
    sink.write(_epoch(2, 95, global_batch_size=256, num_workers=2, test_acc=0.5, train_loss=float("nan")))
    sink.write({"kind": "failure", "epoch": 3, "samples_seen": 4000, "from_workers": 2, "lost_workers": 1,
                "replacements": 1, "to_workers": 2, "error": "ActorDiedError", "recovery_s": 2.5})
    sink.write({"kind": "restart", "epoch": 3, "samples_seen": 0, "updates": 95, "checkpoint": "epoch-0002.pt",
                "num_workers": 1, "reason": "x"})
    sink.close()

    scalars = _scalars(tmp_path)
    assert scalars["epoch/test_acc"] == [(63, 0.25), (95, 0.5)]
    assert scalars["epoch/global_batch_size"] == [(63, 128.0), (95, 256.0)]
    assert scalars["epoch/epoch"] == [(63, 1.0), (95, 2.0)]
    assert scalars["epoch/eigenvalue"] == [(63, 66.5)]  # null when not probed: no point
    assert "epoch/train_loss" not in scalars  # NaN (a diverged loss) is left out
    assert "epoch/policy_reason" not in scalars
    # after epoch 1's 63 updates; the *_s fields only, no worker counts
    assert {tag: points for tag, points in scalars.items() if tag.startswith("resize/")} == {
        "resize/actor_start_s": [(63, 0.5)], "resize/rendezvous_s": [(63, 0.25)],
        "resize/state_transfer_s": [(63, 0.125)], "resize/first_step_s": [(63, 0.75)],
        "resize/resize_s": [(63, 0.875)]}
    assert scalars["failure/recovery_s"] == [(95, 2.5)]
    assert not any(tag.startswith(("geometry/", "restart/")) for tag in scalars)


def test_each_record_is_on_disk_before_close(tmp_path):
    """A live run: TensorBoard must see an epoch as soon as it is written, not flush_secs later."""
    sink = tb.TensorBoardSink(tmp_path)
    sink.write(_epoch(1, 63))
    assert _scalars(tmp_path)["epoch/lr"] == [(63, pytest.approx(0.05, rel=1e-7))]  # stored as float32
    sink.close()


def test_missing_tensorboard_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # the import now raises ImportError
    expected = ("logging.tensorboard=true needs tensorboard; install it with pip install 'absa-train[tensorboard]' "
                "or set logging.tensorboard=false")
    with pytest.raises(UserError) as raised:
        tb.check_available()
    assert str(raised.value) == expected
    with pytest.raises(UserError, match="needs tensorboard"):
        tb.TensorBoardSink(tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written


def test_config_switch_defaults_off():
    from absa_cli import config as config_mod

    assert config_mod.load("quickstart").logging.tensorboard is False
    assert config_mod.load("quickstart", ["logging.tensorboard=true"]).logging.tensorboard is True


def test_a_run_with_logging_tensorboard_writes_its_epochs(tmp_path, one_thread):
    """Wired end to end: the controller mirrors every epoch record into runs/<id>/tensorboard/."""
    import io

    from absa_cli import config as config_mod
    from absa_cli.driver.controller import Controller
    from absa_cli.driver.local_group import LocalGroup
    from absa_cli.run.metrics import Console
    from absa_cli.run.rundir import RunDir

    from conftest import TINY

    config = config_mod.load("quickstart", [*TINY, "logging.tensorboard=true", "cluster.max_workers=1"])
    run = RunDir.create(tmp_path, config)
    controller = Controller(config, run, LocalGroup(config), Console(stream=io.StringIO(), force_plain=True))
    controller.run_all()
    controller.close()
    scalars = _scalars(run.path / "tensorboard")
    records = run.records("epoch")
    assert [step for step, _ in scalars["epoch/test_acc"]] == [r["updates"] for r in records]
    assert [value for _, value in scalars["epoch/test_acc"]] == pytest.approx([r["test_acc"] for r in records])


def test_a_resume_hides_what_was_logged_after_its_checkpoint(tmp_path):
    """The interrupted driver logged epochs 1–3; the resumed one restores epoch 1's checkpoint (10 updates) and
    logs epochs 2–3 again: TensorBoard shows one history, the resumed one, and a resize right after the resume
    sits at the checkpoint's update count, not at 0."""
    first = tb.TensorBoardSink(tmp_path)
    for epoch, acc in ((1, 0.1), (2, 0.2), (3, 0.3)):
        first.write(_epoch(epoch, 10 * epoch, test_acc=acc))
    first.close()
    resumed = tb.TensorBoardSink(tmp_path)
    resumed.write({"kind": "resume", "epoch": 2, "samples_seen": 0, "updates": 10, "checkpoint": "epoch-0001.pt",
                   "max_workers": 2})
    resumed.write({"kind": "resize", "epoch": 2, "from_workers": 1, "to_workers": 2, "resize_s": 0.5})
    for epoch, acc in ((2, 0.25), (3, 0.35)):
        resumed.write(_epoch(epoch, 10 * epoch, test_acc=acc))
    resumed.close()
    scalars = _scalars(tmp_path)
    assert scalars["epoch/test_acc"] == [(10, pytest.approx(0.1)), (20, pytest.approx(0.25)), (30, pytest.approx(0.35))]
    assert scalars["resize/resize_s"] == [(10, 0.5)]
