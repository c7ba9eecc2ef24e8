"""benchmarks/throughput.py on the CPU at tiny sizes: both contenders are timed, the probe is timed from a cold start
(a warm start would begin each repeat at the converged eigenvector of the same weights and samples, and report one
HVP), and --profile writes each contender's operator tables and a per-step row."""

from __future__ import annotations

import re

import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def throughput():
    return load_benchmark("throughput")


def test_tiny_throughput_with_a_cold_probe_and_a_profile(throughput, tmp_path, capsys, one_thread):
    details = tmp_path / "profile.txt"
    throughput.main(["--model", "c1", "--width", "0.25", "--batch", "8", "--steps", "2", "--repeats", "1",
                     "--device", "cpu", "--threads", "1", "--probe", "--probe-batch", "8", "--probe-iters", "4",
                     "--probe-repeats", "2", "--profile", str(details), "--synced-plain"])
    printed = capsys.readouterr().out
    assert re.search(r"^\| plain \| [\d,]+ \| [\d,]+–[\d,]+ \| 1\.00× \|$", printed, re.M)
    for name in ("engine", "plain, synced"):
        assert re.search(rf"^\| {name} \| [\d,]+ \| [\d,]+–[\d,]+ \| \d\.\d\d× \|$", printed, re.M)
    hvps = int(re.search(r"^\| [\d.]+ \| (\d+) \| [\d.]+ \|", printed, re.M).group(1))
    assert 1 < hvps <= 4  # every repeat starts cold, so it iterates, within probe.max_iter
    for name in ("plain", "engine"):
        assert re.search(rf"^\| {name} \| [\d.]+ \| [\d.]+ \| \d+ \| [\d.]+ \| [\d.]+ \|$", printed, re.M)
        assert f"## {name}: by self CPU time" in details.read_text()
    assert "aten::convolution" in details.read_text()


def test_sync_sources_counts_each_synchronising_call_by_its_line(throughput, monkeypatch):
    """The GPU-only diagnostic, with CUDA's sync warnings stood in for: every warning raised while the repetition
    runs is counted by the innermost absa or benchmark frame, and the debug mode is put back even if the run fails."""
    import warnings

    modes = []
    monkeypatch.setattr(throughput.torch.cuda, "set_sync_debug_mode", modes.append)

    def run():
        for _ in range(3):
            warnings.warn("called a synchronizing CUDA operation")
        warnings.warn("some deprecation", DeprecationWarning)  # not a sync: not counted

    sources = throughput.sync_sources(run)
    assert sum(sources.values()) == 3 and len(sources) == 1
    assert next(iter(sources)).startswith("throughput.py:")  # the innermost of our frames: the harness's call
    assert modes == ["warn", "default"]

    def failing():
        raise RuntimeError("a step failed")

    with pytest.raises(RuntimeError):
        throughput.sync_sources(failing)
    assert modes[-1] == "default"


@pytest.mark.parametrize("synced", [False, True])
def test_the_synced_plain_loop_reads_the_loss_back_after_every_step(throughput, monkeypatch, synced, one_thread):
    """--synced-plain's contender waits for the device once a step (as the engine does); the plain loop once a
    repetition."""
    args = throughput.parse_args(["--model", "c1", "--width", "0.25", "--batch", "8", "--steps", "3",
                                  "--device", "cpu", "--threads", "1"])
    config = throughput.build_config(args, 24)
    engine = throughput.Engine(config, device=throughput.torch.device("cpu"),
                               datasets=throughput.build_data(args, 24))
    run = throughput.plain_loop(config, engine, 3, synced=synced)
    reads = []
    item = throughput.torch.Tensor.item
    monkeypatch.setattr(throughput.torch.Tensor, "item", lambda self: reads.append(1) or item(self))
    run()
    assert len(reads) == (3 + 1 if synced else 1)


def test_probe_share_counts_each_recheck_as_a_probe(throughput, tmp_path):
    """A finished run's probe share: probe_s of an epoch sums its probe and rechecks, and so does the count."""
    import json

    epochs = [{"kind": "epoch", "probe_hvps": 6, "probe_s": 3.0, "epoch_s": 30.0, "eigenvalue_rechecks": [2.0, 2.5]},
              {"kind": "epoch", "probe_hvps": 2, "probe_s": 1.0, "epoch_s": 10.0},  # recorded before rechecks
              {"kind": "epoch", "probe_hvps": 0, "probe_s": 0.0, "epoch_s": 10.0, "eigenvalue_rechecks": []}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in epochs))
    share = throughput.probe_share(tmp_path)
    assert (share["epochs"], share["probes"], share["hvps"]) == (3, 4, 8)
    assert share["share"] == pytest.approx(4.0 / 50.0)
