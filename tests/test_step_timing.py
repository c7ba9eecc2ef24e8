"""Where a step's time goes (absa_cli/worker/timing.py): the timer charges each lap to its phase; every chunk
reports the split (the mean over workers, all-reduced with the chunk's statistics); every epoch record carries it,
per geometry and for the epoch, with the rest of the worker's chunk time as ``other``; the overhead benchmark runs."""

from __future__ import annotations

import io
import json
import time

import pytest
import torch

from absa_cli import config as config_mod
from absa_cli.decide.geometry import BatchGeometry
from absa_cli.driver.controller import Controller
from absa_cli.driver.local_group import LocalGroup
from absa_cli.run.metrics import Console
from absa_cli.run.rundir import RunDir
from absa_cli.worker.engine import Engine
from absa_cli.worker.timing import PHASES, StepTimer

from conftest import TINY, load_benchmark


def test_each_lap_is_charged_to_its_phase():
    timer = StepTimer(torch.device("cpu"))
    timer.start()
    time.sleep(0.02)
    timer.lap("data")
    time.sleep(0.05)
    timer.lap("compute")
    timer.lap("allreduce")
    data, compute, allreduce, optimizer = timer.totals()
    assert 0.02 <= data < 0.05 and 0.05 <= compute < 0.1 and allreduce < 0.01 and optimizer == 0.0


def test_a_chunk_reports_its_split_and_it_fits_in_the_chunk():
    config = config_mod.load("quickstart", [*TINY, "policy.name=fixed"])
    engine = Engine(config)
    stats = engine.train_chunk(0, 0, [0.05, 0.05], BatchGeometry(64, 1, 32, 2))
    assert len(stats.phase_s) == len(PHASES)
    split = dict(zip(PHASES, stats.phase_s))
    assert split["data"] > 0 and split["compute"] > 0 and split["optimizer"] > 0 and split["allreduce"] >= 0
    assert split["compute"] > split["optimizer"]  # forward and backward of 64 samples outweigh one SGD update
    assert sum(stats.phase_s) <= stats.seconds


def test_every_epoch_record_carries_the_split_per_geometry_and_for_the_epoch(tmp_path):
    config = config_mod.load("quickstart", [*TINY, "policy.name=fixed", "cluster.max_workers=1"])
    run = RunDir.create(tmp_path, config)
    Controller(config, run, LocalGroup(config), Console(stream=io.StringIO(), force_plain=True)).run_all()
    epochs = run.records("epoch")
    assert len(epochs) == 2
    for record in epochs:
        split = record["step_s"]
        assert set(split) == {*PHASES, "other", "total"}
        assert split["total"] == pytest.approx(sum(split[p] for p in PHASES) + split["other"])
        assert split["compute"] > 0 and split["total"] < record["epoch_s"]
        (geometry,) = record["geometries"]
        assert geometry["step_s"] == split and "timed" not in geometry  # one geometry: the same split


def test_the_overhead_benchmark_runs(tmp_path, capsys):
    benchmark = load_benchmark("step_timing_overhead")
    out = tmp_path / "overhead.json"
    benchmark.main(["--chunks", "3", "--steps", "1", "--overrides", "data.train_size=256", "data.test_size=64",
                    "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["timed_chunk_s"] > 0 and result["untimed_chunk_s"] > 0 and "overhead" in result
    assert "| overhead |" in capsys.readouterr().out


@pytest.mark.gpu
def test_on_cuda_the_split_comes_from_events_and_fits_in_the_chunk():
    config = config_mod.load("quickstart", [*TINY, "policy.name=fixed"])
    engine = Engine(config, device=torch.device("cuda"))
    engine.train_chunk(0, 0, [0.05], BatchGeometry(64, 1, 32, 2))  # warm-up: cuDNN autotuning, allocations
    stats = engine.train_chunk(0, 64, [0.05, 0.05], BatchGeometry(64, 1, 32, 2))
    split = dict(zip(PHASES, stats.phase_s))
    assert split["compute"] > 0 and split["optimizer"] > 0 and split["data"] >= 0
    assert sum(stats.phase_s) <= stats.seconds * 1.05  # GPU time of the chunk, read after its final sync
