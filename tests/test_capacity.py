"""Capacity on a real Ray cluster (the session's local one, 4 CPU slots): a run whose slots are all held by another
job waits, saying so, then ends in one line with exit code 2 (never a traceback, the run resumable); a run that
finds one slot starts on one worker, accumulating, and grows onto a second slot when it frees — without a restart.
The slots are held by plain actors of this test process (another driver, as another job would be)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from conftest import TINY

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow


@ray.remote(num_cpus=1)
class _Holder:
    def ping(self) -> int:
        return 1


def _hold(count: int) -> list:
    holders = [_Holder.remote() for _ in range(count)]
    ray.get([holder.ping.remote() for holder in holders])
    return holders


def _free_cpus() -> int:
    """The cluster's CPU slots, once every slot an earlier test held is free again (Ray releases them shortly after
    an actor dies)."""
    total = int(ray.cluster_resources().get("CPU", 0))
    deadline = time.monotonic() + 30
    while int(ray.available_resources().get("CPU", 0)) < total and time.monotonic() < deadline:
        time.sleep(0.2)
    return int(ray.available_resources().get("CPU", 0))


def test_a_full_cluster_is_waited_for_visibly_then_the_run_ends_in_one_line(ray_cluster, tmp_path):
    holders = _hold(_free_cpus())
    try:
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "absa_cli", "train", "quickstart", *TINY, "--address",
                               ray_cluster, "cluster.start_timeout_s=6", "--runs-dir", str(tmp_path)],
                              capture_output=True, text=True, timeout=120)
        elapsed = time.monotonic() - started
    finally:
        for holder in holders:
            ray.kill(holder)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: no worker could start within cluster.start_timeout_s=6 s: a worker needs 1 CPU; the "
                      "cluster has 0 of 4 CPU free on 1 node, and this run holds none; "
                      "free a slot or raise the timeout, then resume the run"], done.stderr
    assert "no worker can start: a worker needs 1 CPU" in done.stdout
    (run_json,) = tmp_path.glob("*/run.json")
    assert json.loads(run_json.read_text())["status"] == "failed"
    assert elapsed < 60


def test_one_free_slot_starts_the_run_and_a_second_is_taken_when_it_frees(ray_cluster, tmp_path):
    holders = _hold(_free_cpus() - 1)
    command = [sys.executable, "-m", "absa_cli", "train", "quickstart", *TINY, "epochs=3", "data.train_size=1024",
               "policy.name=fixed", "batch.per_worker_max=32", "logging.chunk_steps=1", "--max-gpus", "2",
               "--address", ray_cluster, "--runs-dir", str(tmp_path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("*/checkpoints/epoch-0001.pt")):  # epoch 1, on the one free slot
            assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
            time.sleep(0.2)
        (run_dir,) = tmp_path.iterdir()
        named = [n["name"] for n in ray.util.list_named_actors(all_namespaces=True)]
        assert f"absa-{run_dir.name}-worker1" in named, named  # `ray list actors` shows whose worker it is
        from ray._raylet import GcsClient  # the job table, as `ray list jobs` and the dashboard read it

        jobs = GcsClient(address=ray_cluster).get_all_job_info(timeout=10).values()
        runs = [dict(job.config.metadata) for job in jobs if not job.is_dead]
        assert {"absa_run_id": run_dir.name, "absa_preset": "quickstart"} in runs, runs  # the job names its run
        ray.kill(holders.pop())  # a slot frees during epoch 2
        output, _ = process.communicate(timeout=180)
    finally:
        process.kill()
        for holder in holders:
            ray.kill(holder)
    assert process.returncode == 0, output
    records = [json.loads(line) for line in next(tmp_path.glob("*/metrics.jsonl")).read_text().splitlines()]
    geometries = [r for r in records if r["kind"] == "geometry"]
    assert geometries[0]["num_workers"] == 1 and "the cluster offers 1 of the 2 wanted" in geometries[0]["reason"]
    assert geometries[-1]["num_workers"] == 2 and geometries[-1]["cause"] == "capacity"
    (resize,) = [r for r in records if r["kind"] == "resize"]
    assert (resize["from_workers"], resize["to_workers"], resize["reason"]) == (1, 2, "capacity")
    assert not [r for r in records if r["kind"] in ("restart", "failure")]  # grown live
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert epochs[0]["num_workers"] == 1 and epochs[-1]["num_workers"] == 2
    assert all(r["samples_seen"] == 1024 for r in epochs)
