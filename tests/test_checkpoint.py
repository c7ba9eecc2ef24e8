"""Checkpoint files: round trip, atomic write, and safe loading (weights_only) of hostile or broken files."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch

from absa_cli.run import checkpoint
from absa_cli.run.checkpoint import CheckpointError


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


def test_a_file_that_is_not_a_checkpoint_or_a_damaged_archive_is_named_in_one_line(tmp_path):
    other = tmp_path / "metrics.jsonl"
    other.write_text("{}\n")
    with pytest.raises(CheckpointError, match="it is not a PyTorch checkpoint archive; pass another .pt file"):
        checkpoint.load(other)
    for content in (b"", b"\0" * 4096):  # a write cut short by a crash or a full disk: not "not a checkpoint"
        (tmp_path / "epoch-0002.pt").write_bytes(content)
        with pytest.raises(CheckpointError, match="it is empty \\(or zeros\\): a write was cut short; pass another "):
            checkpoint.load(tmp_path / "epoch-0002.pt")
    truncated = tmp_path / "epoch-0001.pt"
    torch.save({"format_version": 1, "model": {}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(truncated)
    assert str(info.value).endswith("(PytorchStreamReader failed reading zip archive: failed finding central "
                                    "directory); it is truncated, corrupted or not an absa checkpoint; pass another "
                                    ".pt file from a run's checkpoints/ folder (`absa runs show RUN_ID` verifies "
                                    "each), or the run's folder")


@pytest.mark.parametrize(("state", "says"), [
    ({"format_version": 2, "model": {}}, "has format 2, newer than this absa reads (format 1); use the absa version "
                                         "that wrote it"),
    ({"format_version": 1}, "is not an absa checkpoint (format 1); pass another .pt file from a run's checkpoints/"),
    ([1, 2], "is not an absa checkpoint (format 1); pass another .pt file"),
])
def test_an_archive_that_is_not_an_absa_checkpoint_says_what_to_pass_instead(tmp_path, state, says):
    """A loadable archive of another shape named no fix; one a newer absa wrote is not 'not an absa checkpoint'."""
    path = tmp_path / "epoch-0001.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(path)
    assert str(info.value).startswith(f"checkpoint {path} ") and says in str(info.value), str(info.value)


def test_code_carrying_pickle_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "model": {}, "payload": _Exploit(str(marker))}, path, pickle_protocol=2)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(path)
    assert not marker.exists()
    message = str(info.value)
    assert "cannot be loaded safely" in message and "\n" not in message
    # it names what the file asks to run, and never repeats torch's advice to load with weights_only=False
    assert "would call posix.system" in message and "False" not in message
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


def test_a_checkpoint_its_manifest_refutes_names_the_fix(tmp_path):
    """Truncated or corrupted against the manifest: the line names the problem and how to read an older one that
    verifies (the folder, which `absa hessian` accepts), not only the problem (review)."""
    store = checkpoint.CheckpointStore(tmp_path)
    for epoch in (1, 2):
        store.save(f"epoch-{epoch:04d}.pt", _store_state(epoch))
    newest = tmp_path / "epoch-0002.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(newest)
    assert str(info.value).startswith("checkpoint epoch-0002.pt is truncated (1000 of ")
    assert str(info.value).endswith(f"; pass an older checkpoint from {tmp_path}, or that folder (or its run "
                                    f"directory) to read the newest one that verifies")
    assert checkpoint.load(tmp_path / "epoch-0001.pt")["epoch"] == 1


def _store_state(epoch: int, samples_seen: int = 0):
    return {**_state(), "epoch": epoch, "samples_seen": samples_seen, "updates": 10 * epoch + samples_seen}


def test_store_keeps_the_last_n_with_a_sha256_manifest(tmp_path):
    store = checkpoint.CheckpointStore(tmp_path, keep_last=2)
    for epoch in (1, 2, 3):
        store.save(f"epoch-{epoch:04d}.pt", _store_state(epoch))
    assert [e.file for e in store.entries()] == ["epoch-0002.pt", "epoch-0003.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0002.pt", "epoch-0003.pt", "manifest.json"]
    for entry in store.entries():
        data = (tmp_path / entry.file).read_bytes()
        assert entry.sha256 == hashlib.sha256(data).hexdigest() and entry.bytes == len(data)
    entry, state = store.latest(report=pytest.fail)
    assert entry.file == "epoch-0003.pt" and state["epoch"] == 3


def _damage(path, how: str) -> None:
    if how == "corrupted":  # same size, one byte flipped in the middle: only the sha256 can tell
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    else:
        path.unlink()


@pytest.mark.parametrize("how", ["corrupted", "truncated", "missing"])
def test_a_damaged_newest_checkpoint_is_reported_in_one_line_and_the_previous_one_used(tmp_path, how):
    store = checkpoint.CheckpointStore(tmp_path, keep_last=3)
    for epoch in (1, 2):
        store.save(f"epoch-{epoch:04d}.pt", _store_state(epoch))
    _damage(tmp_path / "epoch-0002.pt", how)
    lines = []
    entry, state = store.latest(report=lines.append)
    assert entry.file == "epoch-0001.pt" and state["epoch"] == 1
    assert len(lines) == 1 and "\n" not in lines[0]
    assert f"epoch-0002.pt is {how}" in lines[0] and "falling back to the previous one" in lines[0]
    if how != "missing":  # loading the damaged file directly is refused too, with the same reason
        with pytest.raises(CheckpointError, match=how):
            checkpoint.load(tmp_path / "epoch-0002.pt")


def test_no_usable_checkpoint_is_an_error_and_none_written_is_none(tmp_path):
    store = checkpoint.CheckpointStore(tmp_path)
    assert store.latest(report=pytest.fail) is None
    store.save("epoch-0001.pt", _store_state(1))
    _damage(tmp_path / "epoch-0001.pt", "truncated")
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        store.latest(report=lambda line: None)


def test_a_listed_checkpoint_carrying_code_is_refused_and_the_code_does_not_run(tmp_path):
    """Even with a matching sha256 (an attacker can rewrite the manifest), the payload never runs."""
    store = checkpoint.CheckpointStore(tmp_path)
    store.save("epoch-0001.pt", _store_state(1))
    marker = tmp_path / "pwned"
    evil = tmp_path / "epoch-0002.pt"
    torch.save({"format_version": 1, "model": {}, "payload": _Exploit(str(marker))}, evil, pickle_protocol=2)
    data = evil.read_bytes()
    manifest = json.loads(store.manifest_path.read_text())
    manifest["checkpoints"].append({**manifest["checkpoints"][0], "file": evil.name, "bytes": len(data),
                                    "sha256": hashlib.sha256(data).hexdigest(), "epoch": 2})
    store.manifest_path.write_text(json.dumps(manifest))
    lines = []
    entry, _ = store.latest(report=lines.append)
    assert entry.file == "epoch-0001.pt"
    assert "cannot be loaded safely" in lines[0] and not marker.exists()


@pytest.mark.parametrize("name, field, value, reason", [
    ("a path out of the run", "file", "../../victim.txt", "'../../victim.txt', which is not a checkpoint file name"),
    ("an absolute path", "file", "/tmp/victim.pt", "not a checkpoint file name"),
    ("another file of the folder", "file", "manifest.json", "not a checkpoint file name"),
    ("a size that is text", "bytes", "123", "bytes '123' is not int"),
    ("an epoch that is a flag", "epoch", True, "epoch True is not int"),
])
def test_a_manifest_naming_a_file_absa_does_not_write_is_damaged_and_nothing_outside_is_touched(
        tmp_path, name, field, value, reason):
    """A crafted (or copied-in) manifest must not make pruning delete, or `absa runs show` hash, a file outside the
    run: the whole manifest is refused as damaged, in one line, before any entry is used."""
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    store = checkpoint.CheckpointStore(folder, keep_last=1)
    store.save("epoch-0001.pt", _store_state(1))
    manifest = json.loads(store.manifest_path.read_text())
    manifest["checkpoints"].insert(0, {**manifest["checkpoints"][0], field: value})
    store.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="is damaged") as info:
        store.save("epoch-0002.pt", _store_state(2))  # would prune the first entry's file
    assert reason in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="is damaged"):
        store.latest(report=pytest.fail)
    assert victim.read_text() == "keep me"


def test_a_checkpoint_is_this_runs_by_uid_or_where_a_side_has_none_by_run_id():
    from absa_cli.run.checkpoint import check_identity

    keys = {"seed": "0", "model.width": "0.5"}

    def state(uid, run_id, **config):
        return {"run": {"uid": uid, "id": run_id, "fingerprint": "f", "config": {**keys, **config}}}

    check_identity("a.pt", state("u1", "old-name", ), "u1", "renamed", keys)  # a renamed run keeps its own
    check_identity("a.pt", {"model": {}}, "u1", "run", keys)  # written before checkpoints named their run
    check_identity("a.pt", state(None, "run"), None, "run", keys)  # both made before uids: the ids agree
    with pytest.raises(CheckpointError, match="belongs to run 'other', not 'run'"):
        check_identity("a.pt", state(None, "other"), None, "run", keys)
    with pytest.raises(CheckpointError, match="belongs to another run named 'run'"):
        check_identity("a.pt", state("u2", "run"), "u1", "run", keys)  # the same --run-id in another runs dir
    with pytest.raises(CheckpointError, match=r"another config: model.width=2.0 \(this run: 0.5\)"):
        check_identity("a.pt", state("u1", "run", **{"model.width": "2.0"}), "u1", "run", keys)
