"""Shared fixtures: a tiny, fast config for end-to-end tests."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import pytest

from absa_cli import config as config_mod

# Overrides that shrink the quickstart to a few seconds on 2 CPU cores while keeping every code path. The probe's
# batch of 32 (the paper's is 128): each HVP costs about as much as a training step of its batch, so at 128 the
# probe was most of a tiny run's compute (with 32, the files that use TINY most ran in 26% less time).
TINY = ["epochs=2", "data.train_size=256", "data.test_size=128", "batch.global_batch_size=64", "policy.max_global_batch=256",
        "batch.per_worker_max=32", "logging.chunk_steps=2", "probe.batch_size=32"]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: a second intra-op thread only adds spin-waits, which cost seconds on a loaded 2-core machine."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def tiny_config() -> config_mod.RunConfig:
    return config_mod.load("quickstart", TINY)


def pytest_configure(config):
    """Under `make test` the suite runs in a network namespace of its own (Makefile), whose loopback starts down."""
    from absa_cli.cluster import netns

    if netns.interfaces() == ["lo"]:
        netns.loopback_up()


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole test session (starting one costs ~5 s). Four logical CPU slots let
    single-threaded workers of two groups, or a replacement beside survivors, share this 2-core machine."""
    from absa_cli.cluster.runtime import connect

    connect(num_cpus=4)
    import ray

    yield ray.get_runtime_context().gcs_address


@pytest.fixture(scope="session")
def sandboxes(request, tmp_path_factory):
    """The Ray clusters started by hand (tests/ray_sandbox.py): the scenarios of the tests this session selected
    (``@pytest.mark.sandbox(name)``), run two at a time when the first of those tests asks for its result."""
    import ray_sandbox

    reason = ray_sandbox.unavailable()
    if reason:
        pytest.skip(reason)
    selected = {marker.args[0] for item in request.session.items for marker in item.iter_markers("sandbox")}
    return ray_sandbox.Scenarios(selected, tmp_path_factory.mktemp)


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.gpu`` tests need CUDA: without it they are skipped, saying why (torch is imported only when
    such a test was collected). A ``@pytest.mark.sandbox`` naming no scenario of tests/ray_sandbox.py stops the
    session at collection, naming the test (it was a KeyError in every sandbox test, the scenarios being run
    together)."""
    import ray_sandbox

    for item in items:
        for marker in item.iter_markers("sandbox"):
            name = marker.args[0] if len(marker.args) == 1 and not marker.kwargs else None
            if not isinstance(name, str) or name not in ray_sandbox.SCENARIOS:
                known = ", ".join(sorted(ray_sandbox.SCENARIOS))
                given = ", ".join([*map(repr, marker.args), *(f"{k}={v!r}" for k, v in marker.kwargs.items())])
                raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.sandbox({given}) names no scenario of "
                                        f"tests/ray_sandbox.py; use one of {known}")
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if not torch.cuda.is_available():
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


TIMINGS = {"epoch_s", "probe_s", "resize_s", "train_s", "eval_s", "step_s"}  # seconds: never equal across runs


def untimed(record: dict) -> dict:
    """An epoch record without its seconds (also each geometry's ``step_s``): what must match across runs."""
    kept = {k: v for k, v in record.items() if k not in TIMINGS}
    if "geometries" in kept:
        kept["geometries"] = [{k: v for k, v in g.items() if k != "step_s"} for g in kept["geometries"]]
    return kept


def load_benchmark(name: str):
    """A script of benchmarks/ (not a package) imported as a module, so its functions can be called directly."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# A line another Ray process logged, which Ray forwards to the stderr of this test session, a driver of the session
# cluster (seen: the raylet's warning that /tmp was over 95% full, printed while a `calibrate` case ran): not absa's.
RAY_FORWARDED = re.compile(r"^(\x1b\[[0-9;]*m)?\((raylet|gcs_server|[\w.-]* ?pid=\d+)[^)]*\)")


def with_private_mounts(script: str, timeout: float, env: dict[str, str] | None = None):
    """``sh -c script`` as root of a user namespace with mounts of its own (a read-only or tiny file system the
    script mounts, as root in a user namespace permission bits alone would not stop a write); the test is skipped
    where this machine gives no private mount namespace."""
    result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                            capture_output=True, text=True, timeout=timeout, env=env)
    if result.returncode != 2 and ("mount" in result.stderr or result.stderr.startswith("unshare")):
        pytest.skip(f"no private mount namespace here: {result.stderr.strip()}")
    return result


def as_a_terminal_starts(command: list[str]) -> list[str]:
    """``command`` with SIGINT handled and unblocked, as a shell starts a foreground command: a small Python sets
    both and execs it (same pid). The pytest process's own state must not decide whether absa can see a Ctrl-C: a
    suite started as a background job (``make test &``) has SIGINT ignored, and an ignored signal is inherited
    through exec. preexec_fn would do the same but is unsafe in a threaded parent."""
    reset = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
             "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); os.execv(sys.argv[1], sys.argv[1:])")
    return [sys.executable, "-S", "-c", reset, *command]


@pytest.fixture
def sigint_as_in_a_terminal():
    """In this process, for one test: SIGINT raised as KeyboardInterrupt and unblocked, as Python sets it up when a
    terminal starts it (see ``as_a_terminal_starts``); put back afterwards."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signal.signal(signal.SIGINT, previous)


def absa_stderr_lines(stderr: str) -> list[str]:
    """The non-blank lines of a CLI result's stderr that absa wrote (Ray's forwarded log lines left out)."""
    return [line for line in stderr.splitlines() if line.strip() and not RAY_FORWARDED.match(line)]


def assert_user_error(result, *fragments: str) -> None:
    """A CLI result that is one `error:` line on stderr naming ``fragments``, exit code 2, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = absa_stderr_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def audited_epochs(audit) -> dict[int, tuple[list[int], list[int]]]:
    """(applied, dropped) sample ids per epoch from every worker's audit log, each applied step and each dropped
    tail counted once however many workers logged it; a worker that logged one position twice applied it twice."""
    steps, dropped = {}, {}
    for log in audit.glob("samples-pid*.jsonl"):
        records = [json.loads(line) for line in log.read_text().splitlines()]
        keys = [(r["epoch"], r["start"], "dropped" in r) for r in records]
        assert len(keys) == len(set(keys)), f"{log.name} applied a step twice"
        for record in records:
            key = (record["epoch"], record["start"])
            if "dropped" in record:
                assert dropped.setdefault(key, record["dropped"]) == record["dropped"]
            else:
                assert steps.setdefault(key, record["batch"]) == record["batch"]
    return {epoch: ([i for (e, _), batch in steps.items() if e == epoch for i in batch],
                    [i for (e, _), tail in dropped.items() if e == epoch for i in tail])
            for epoch in sorted({e for e, _ in steps})}


def run_gloo_ranks(worker, out, nprocs: int, deadline_s: float) -> list[dict]:
    """Run ``worker(rank, init_file, out_dir)`` in ``nprocs`` spawned processes (a real gloo group they form through
    ``init_file``) and return what each saved as ``out_dir/rank{R}.pt``; fails the test past ``deadline_s``."""
    import time

    import torch
    import torch.multiprocessing as mp

    context = mp.start_processes(worker, args=(str(out / "init"), str(out)), nprocs=nprocs, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + deadline_s
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(f"the {nprocs} gloo workers did not finish within {deadline_s:.0f} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return [torch.load(out / f"rank{rank}.pt") for rank in range(nprocs)]
