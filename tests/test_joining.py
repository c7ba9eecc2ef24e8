"""Joining a Ray cluster at an explicit address: every refusal is one `error:` line (exit 2) within seconds, and
Ctrl-C is obeyed at once. The heads are real, started by hand as a user would, inside a loopback-only sandbox
(tests/ray_sandbox.py); the listeners that are not Ray heads are plain sockets of this process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
ray = pytest.importorskip("ray")  # the GPU machine has no Ray: its `pytest -m gpu` skips this module

from conftest import TINY, as_a_terminal_starts


STARTED_AND_REFUSED_S = 30  # a refusal that needs no answer from a head, counting the CLI's start-up


def _absa_train(address: str, runs) -> list[str]:
    return [sys.executable, "-m", "absa_cli", "train", "quickstart", *TINY, "--address", address, "--runs-dir",
            str(runs)]


def _one_error_line(outcome: dict | subprocess.CompletedProcess) -> str:
    rc, stderr = (outcome["rc"], outcome["stderr"]) if isinstance(outcome, dict) else (outcome.returncode,
                                                                                          outcome.stderr)
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("[")]  # Ray's own C++ log lines
    assert rc == 2 and "Traceback" not in stderr and len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def test_an_address_where_nothing_listens_is_one_line_within_seconds(tmp_path):
    """Ray retries an unreachable head for minutes; absa says so in one line first (exit 2, nothing created)."""
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.perf_counter()
    done = subprocess.run(_absa_train(f"127.0.0.1:{port}", tmp_path / "runs"), capture_output=True, text=True,
                          timeout=60)
    assert _one_error_line(done) == (
        f"error: cannot reach a Ray cluster at 127.0.0.1:{port} (nothing listens there); start a head there with "
        f"`ray start --head --port {port}`, check --address or RAY_ADDRESS, or leave both unset to start a local "
        f"cluster")
    # start-up alone (an interpreter importing torch and Ray) takes 2-3 s here and up to ~8 s on a loaded CI machine;
    # Ray's own retries would take minutes
    assert time.perf_counter() - started < STARTED_AND_REFUSED_S and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("address, says", [
    ("http://127.0.0.1:8265", "is a dashboard's address, which serves the Jobs API: add --submit"),  # was cut off
    ("ray://127.0.0.1:10001", "is Ray Client's address, which absa does not use"),  # was 30-45 s and Ray's warnings
    ("127.0.0.1:99999", "port 99999 is not a TCP port (1–65535)"),  # was advice to `ray start --head --port 99999`
])
def test_addresses_absa_cannot_join_are_one_line_at_once(address, says):
    from absa_cli.cluster.runtime import check_reachable
    from absa_cli.errors import UserError

    started = time.perf_counter()
    with pytest.raises(UserError) as refused:
        check_reachable(address)
    assert str(refused.value).startswith(f"--address {address}") and says in str(refused.value)
    assert time.perf_counter() - started < 1


def test_a_dashboard_address_in_ray_address_is_named_as_set(tmp_path):
    """The command end to end (one line, exit 2, nothing created). Ray's docs have users export
    RAY_ADDRESS=http://HEAD:8265 for its Jobs CLI; the line named an --address that was never passed."""
    done = subprocess.run([sys.executable, "-m", "absa_cli", "train", "quickstart", "--runs-dir",
                           str(tmp_path / "runs")], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "RAY_ADDRESS": "http://127.0.0.1:8265"})
    assert _one_error_line(done).startswith("error: RAY_ADDRESS=http://127.0.0.1:8265 is a dashboard's address")
    assert not (tmp_path / "runs").exists()


class _Silent:
    """A port that accepts connections and never answers (a dashboard or a Ray Client port, as Ray's GCS client
    sees it)."""

    def __enter__(self) -> str:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return

    def __exit__(self, *exc) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_a_port_that_is_not_a_ray_head_is_one_line_within_seconds(tmp_path):
    """Ray's client would retry such a port for minutes; the handshake's deadline ends it. Timed from the handshake
    child's start, so that the CLI's own start-up (seconds under load) is not counted against the deadline."""
    from absa_cli.cluster.handshake import DEADLINE_S

    with _Silent() as address:
        started = time.perf_counter()
        process = subprocess.Popen(_absa_train(address, tmp_path / "runs"), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        _wait_for_handshake(process)
        asking = time.perf_counter()
        stdout, stderr = process.communicate(timeout=120)
        ended = time.perf_counter()
    line = _one_error_line({"rc": process.returncode, "stderr": stderr})
    assert line.startswith(f"error: something at {address} accepts connections but did not answer as a Ray head "
                           f"within 5 s; give the head's GCS address"), line
    # the deadline, then killing the child and printing one line: a second or two beyond it even under load
    assert DEADLINE_S - 0.5 < ended - asking < DEADLINE_S + 4, f"{ended - asking:.1f} s from the handshake's start"
    assert ended - started < STARTED_AND_REFUSED_S + DEADLINE_S and not (tmp_path / "runs").exists()


def _wait_for_handshake(process: subprocess.Popen, timeout_s: float = 60) -> None:
    """Until absa has started its handshake child: a fixed sleep could land in start-up under load."""
    pid, deadline = process.pid, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"absa ended before its handshake: {process.communicate()}"
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            try:
                if b"absa_cli.cluster.handshake" in Path(f"/proc/{child}/cmdline").read_bytes():
                    return
            except OSError:  # exited meanwhile
                pass
        time.sleep(0.05)
    raise AssertionError(f"absa (pid {pid}) started no handshake within {timeout_s} s")


def _signal_state(pid: int) -> str:
    """The SigBlk/SigIgn/SigCgt masks of every thread of ``pid`` (for a failure's message)."""
    lines = []
    for task in sorted(Path(f"/proc/{pid}/task").iterdir()):
        try:
            status = (task / "status").read_text().splitlines()
        except OSError:
            continue
        lines.append(f"{task.name}: " + " ".join(line.replace("\t", "") for line in status
                                                  if line.startswith(("SigBlk", "SigIgn", "SigCgt"))))
    return "; ".join(lines)


def test_ctrl_c_while_joining_exits_at_once(tmp_path):
    """Ray's client retries inside native code that Ctrl-C cannot reach; absa's handshake is a child process. The
    answer to Ctrl-C (its line) comes within 2 s; the process itself is gone soon after (leaving an interpreter
    that imported torch and Ray takes about 1 s here, 2-3 s on a loaded machine)."""
    with _Silent() as address:
        process = subprocess.Popen(as_a_terminal_starts(_absa_train(address, tmp_path / "runs")),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_for_handshake(process)  # past start-up (seconds under load) and the port check
        state = _signal_state(process.pid)
        interrupted = time.perf_counter()
        process.send_signal(signal.SIGINT)
        first = process.stderr.readline()
        answered = time.perf_counter() - interrupted
        _, rest = process.communicate(timeout=30)
        ended = time.perf_counter() - interrupted
    stderr = first + rest
    # ended by the Ctrl-C (130), not by the handshake's own 5 s deadline (2) that a missed Ctrl-C would wait for
    assert process.returncode == 130 and first.startswith("interrupted") and "Traceback" not in stderr, \
        f"{stderr}\nsignal masks before the Ctrl-C: {state}"
    assert answered < 2 and ended < 10, f"answered {answered:.1f} s, ended {ended:.1f} s after Ctrl-C"
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
@pytest.mark.sandbox("token_and_versions")
def test_token_authentication_and_versions_against_a_real_head(sandboxes):
    """A head started by hand with token authentication on (a token in its HOME, as Ray makes one): a client with
    no token, a wrong one, or RAY_AUTH_MODE=disabled gets one line naming the fix; the machine's own token is sent
    without any setting; a head that records another Ray version is named with both versions."""
    result = sandboxes.result("token_and_versions")[1]
    address = result["address"]
    fix = ("copy the head's ~/.ray/auth_token to this machine (or set RAY_AUTH_TOKEN to its contents; "
           "`ray get-auth-token` prints it on the head)")
    assert _one_error_line(result["no_token"]) == (
        f"error: the Ray cluster at {address} requires token authentication and this machine has no token; {fix}")
    assert _one_error_line(result["wrong_token"]) == (
        f"error: the Ray cluster at {address} rejected this machine's token (from RAY_AUTH_TOKEN); {fix}")
    assert _one_error_line(result["mode_disabled"]) == (
        f"error: the Ray cluster at {address} requires token authentication but RAY_AUTH_MODE=disabled here; "
        f"unset it (absa then sends this machine's token, from ~/.ray/auth_token)")
    assert not result["runs_before_joining"]  # nothing was created by a refused run
    assert result["token_in_home"]["rc"] == 0 and result["statuses"] == ["finished"], result["token_in_home"]
    assert f"ray: connected to {address}" in result["token_in_home"]["stdout"] + result["token_in_home"]["stderr"]
    python = ".".join(map(str, sys.version_info[:3]))
    assert _one_error_line(result["other_version"]) == (
        f"error: the Ray cluster at {address} runs Ray 2.59.0 on Python 3.11.9, this machine Ray {ray.__version__} "
        f"on Python {python}; Ray needs both to match: run absa on a machine of the cluster (or through "
        f"`ray job submit`), or install Ray 2.59.0 on Python 3.11.9 here")
    for name in ("no_token", "wrong_token", "mode_disabled", "other_version"):
        assert result[name]["seconds"] < 10, (name, result[name]["seconds"])


@pytest.mark.slow
def test_without_an_address_absa_starts_its_own_cluster_even_where_ray_start_left_one_behind(tmp_path):
    """`ray start --head` leaves its address in <ray temp>/ray_current_cluster, and a bare ray.init() joins that
    cluster; leaving --address unset must still mean a cluster of the run's own."""
    scratch = tempfile.mkdtemp(prefix="absa-", dir="/tmp")  # Ray's socket paths must stay short
    try:
        os.makedirs(f"{scratch}/ray")
        with open(f"{scratch}/ray/ray_current_cluster", "w") as handle:
            handle.write("127.0.0.1:1")  # a cluster somebody started, and stopped without `ray stop`
        done = subprocess.run([sys.executable, "-m", "absa_cli", "train", "quickstart", *TINY, "epochs=1",
                               "--runs-dir", str(tmp_path / "runs")], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "RAY_TMPDIR": scratch})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ray: started a local cluster on " in done.stdout + done.stderr
