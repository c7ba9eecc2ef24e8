"""Checkpoint files: round trip, atomic write, and safe loading (weights_only) of hostile or broken files."""

from __future__ import annotations

import os

import pytest
import torch

from absa_cli import checkpoint
from absa_cli.checkpoint import CheckpointError


def _state():
    return {"model": {"w": torch.arange(6.0).view(2, 3)}, "epoch": 3, "history": [{"global_batch_size": 128}],
            "preset": "quickstart"}


def test_round_trip(tmp_path):
    path = tmp_path / "ckpt" / "epoch-0003.pt"
    checkpoint.save(path, _state())
    loaded = checkpoint.load(path)
    assert torch.equal(loaded["model"]["w"], torch.arange(6.0).view(2, 3))
    assert loaded["epoch"] == 3 and loaded["history"] == [{"global_batch_size": 128}]
    assert [p.name for p in path.parent.iterdir()] == ["epoch-0003.pt"]  # no temp file left behind


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "epoch-0001.pt"
    checkpoint.save(path, _state())
    with pytest.raises(Exception):
        checkpoint.save(path, {"model": {}, "bad": lambda: None})  # not picklable: the write fails half-way
    assert checkpoint.load(path)["epoch"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["epoch-0001.pt"]


class _Exploit:
    """Unpickling this would create a file: the payload a malicious checkpoint would carry."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_carrying_pickle_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "model": {}, "payload": _Exploit(str(marker))}, path, pickle_protocol=2)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(path)
    assert not marker.exists()
    assert "cannot be loaded safely" in str(info.value) and "\n" not in str(info.value)
    torch.load(path, weights_only=False)  # the payload is real: an unsafe load does run it
    assert marker.exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing", "foreign"])
def test_broken_checkpoints_give_one_clear_line(tmp_path, damage):
    path = tmp_path / "epoch-0001.pt"
    checkpoint.save(path, _state())
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif damage == "missing":
        path.unlink()
    else:
        torch.save({"something": 1}, path)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
