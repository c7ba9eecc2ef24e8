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
                     "--probe-repeats", "2", "--profile", str(details)])
    printed = capsys.readouterr().out
    assert re.search(r"^\| plain \| [\d,]+ \| [\d,]+–[\d,]+ \| 1\.00× \|$", printed, re.M)
    assert re.search(r"^\| engine \| [\d,]+ \| [\d,]+–[\d,]+ \| \d\.\d\d× \|$", printed, re.M)
    hvps = int(re.search(r"^\| [\d.]+ \| (\d+) \| [\d.]+ \|", printed, re.M).group(1))
    assert 1 < hvps <= 4  # every repeat starts cold, so it iterates, within probe.max_iter
    for name in ("plain", "engine"):
        assert re.search(rf"^\| {name} \| [\d.]+ \| [\d.]+ \| \d+ \| [\d.]+ \| [\d.]+ \|$", printed, re.M)
        assert f"## {name}: by self CPU time" in details.read_text()
    assert "aten::convolution" in details.read_text()
