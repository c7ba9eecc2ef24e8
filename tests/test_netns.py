"""The local Ray cluster's private network: the `absa` command re-runs itself in a network namespace whose only
interface is loopback, so no port it opens can be reached from another machine (absa_cli.cluster.netns).

End to end: a real `absa train` starting its own cluster is watched from outside through /proc: its namespace is
not ours, has only `lo`, and Ray's listening sockets are in it. The rules (who re-runs, who does not, the one line
where namespaces are not allowed) are checked in-process, where nothing can exec."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from absa_cli.cluster import netns, reaper

from conftest import TINY

LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's state column


def _namespaces_allowed() -> bool:
    unshare = shutil.which("unshare")
    return unshare is not None and netns._namespaces_allowed(unshare)


def _listening(pid: int) -> list[str]:
    """Local addresses (hex, as /proc prints them) of every listening TCP socket in ``pid``'s namespace."""
    found = []
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                if fields[3] == LISTEN:
                    found.append(fields[1])
    return found


@pytest.mark.slow
@pytest.mark.skipif(not _namespaces_allowed(), reason="unprivileged user and network namespaces are not allowed here")
def test_absa_train_runs_its_local_cluster_in_a_loopback_only_namespace_which_dies_with_it(tmp_path):
    """Also: SIGKILLed after epoch 1, the driver takes its whole local cluster with it within seconds (before the
    reaper, Ray's dashboard and runtime-env agents lingered 60 s and more), and the next `absa` starts as usual.

    And where the test can replace /etc/hosts (in a mount namespace of its own), it maps this hostname to a LAN
    address, 10.255.0.1, as Docker containers and cloud VMs do: Ray turned the local cluster's 127.0.0.1 into that
    address, which absa's namespace does not have, and the start hung for good (gloo would bind to it too). The run
    of two workers must train as anywhere else, with nothing from Ray (a failed probe of 8.8.8.8, its token notice)
    on the terminal."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", netns.ENV, netns.OWNER)}
    runs = tmp_path / "runs"
    command = [sys.executable, "-m", "absa_cli", "train", "quickstart", *TINY, "epochs=2", "--runs-dir", str(runs)]
    if _hosts_can_be_replaced():  # unshare and sh exec in turn: the pid stays absa's
        hosts = tmp_path / "hosts"
        hosts.write_text(f"127.0.0.1 localhost\n10.255.0.1 {socket.gethostname()}\n")
        command = ["unshare", "--user", "--map-root-user", "--mount", "--", "sh", "-c",
                   'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts), *command]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               cwd=tmp_path)
    lines, seen, cluster = [], None, {}
    try:
        deadline = time.monotonic() + 120
        for line in process.stdout:
            lines.append(line)
            if "ray: started a local cluster" in line:
                # the driver kept its pid across the exec, so /proc/<pid> shows the namespace it now runs in
                seen = (os.readlink(f"/proc/{process.pid}/ns/net"), netns.interfaces(process.pid),
                        _listening(process.pid))
            if "epoch 1:" in line:  # GCS, raylet, agents, workers: every process below the driver
                cluster = reaper.descendants({process.pid}, reaper._processes())
                process.kill()
                break
            assert time.monotonic() < deadline, "".join(lines)
        assert process.wait(timeout=30) == -signal.SIGKILL, "".join(lines)
    finally:
        process.kill()
    output = "".join(lines)
    assert seen is not None, output
    namespace, interfaces, listening = seen
    assert "ray: started a local cluster on 127.0.0.2 in a private network namespace (loopback only)" in output
    assert "network_util" not in output and "RAY_AUTH_MODE" not in output and "2 workers" in output
    assert namespace != os.readlink("/proc/self/ns/net")
    assert interfaces == ["lo"]
    assert len(listening) >= 3, listening  # GCS, raylet, the driver's core worker: there, not in our namespace
    assert len(cluster) >= 5, cluster  # at least GCS, raylet, the two agents and a worker
    deadline = time.monotonic() + 15
    while ((alive := _still_running(cluster)) or _in_namespace(namespace)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive, f"left behind by the SIGKILLed driver: {alive}"
    assert not _in_namespace(namespace)  # nothing at all is left in the namespace, not only what the test saw
    (run,) = runs.iterdir()
    resumed = subprocess.run([sys.executable, "-m", "absa_cli", "resume", run.name, "--runs-dir", str(runs)],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=180)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "summary: 2 epochs" in resumed.stdout and "Traceback" not in resumed.stderr
    assert f"lock: took the run over from its last driver, pid {process.pid} on " in resumed.stderr
    assert "which is no longer running" in resumed.stderr


def _in_namespace(namespace: str) -> list[int]:
    """The pids of the processes still in the network namespace ``namespace`` (as /proc/PID/ns/net reads)."""
    found = []
    for pid in reaper._processes():
        try:
            if os.readlink(f"/proc/{pid}/ns/net") == namespace:
                found.append(pid)
        except OSError:
            pass
    return found


def _hosts_can_be_replaced() -> bool:
    unshare = shutil.which("unshare")
    return unshare is not None and subprocess.run(
        [unshare, "--user", "--map-root-user", "--mount", "--", "mount", "--bind", "/dev/null", "/etc/hosts"],
        capture_output=True).returncode == 0


def _still_running(processes: dict[int, int]) -> list[str]:
    """The names of ``processes`` (pid -> start time) still running."""
    table = reaper._processes()
    alive = []
    for pid, start in processes.items():
        if table.get(pid, (0, None))[1] == start:
            try:
                alive.append(open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0].decode()[-40:])
            except OSError:
                pass
    return alive


def test_only_the_absa_command_starting_a_local_cluster_re_runs_itself(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(netns.ENV, raising=False)
    monkeypatch.setattr(netns, "entry_argv", None)  # an in-process caller (this test, a CliRunner): never exec
    assert netns.isolate(None, local=False) is None
    monkeypatch.setattr(netns, "entry_argv", ["train", "quickstart"])
    assert netns.isolate("127.0.0.1:6379", local=False) is None  # joining a cluster: its network is its own
    assert netns.isolate(None, local=True) is None  # no cluster at all
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert netns.isolate(None, local=False) is None
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setenv(netns.ENV, "off")  # the user's opt-out
    assert netns.isolate(None, local=False) is None


def test_where_namespaces_are_not_available_one_line_says_so_and_the_run_goes_on(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(netns.ENV, raising=False)
    monkeypatch.setattr(netns, "entry_argv", ["train", "quickstart"])
    monkeypatch.setenv("PATH", str(tmp_path))  # no `unshare` to be found
    note = netns.isolate(None, local=False)
    assert note is not None and "\n" not in note
    assert "no private network namespace" in note and "all interfaces" in note and "docs/cluster.md" in note


def test_interfaces_reads_proc():
    assert "lo" in netns.interfaces()


def test_an_unshare_that_is_not_allowed_gives_the_same_one_line(monkeypatch, tmp_path):
    """`unshare` present but refused (a hardened kernel, a container's seccomp profile): one line, no exec."""
    fake = tmp_path / "unshare"
    fake.write_text("#!/bin/sh\necho 'unshare: unshare failed: Operation not permitted' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(netns.ENV, raising=False)
    monkeypatch.setattr(netns, "entry_argv", ["train", "quickstart"])
    monkeypatch.setenv("PATH", str(tmp_path))
    note = netns.isolate(None, local=False)
    assert note is not None and "no private network namespace" in note


def test_an_inherited_inside_marker_is_not_believed_outside_the_namespace(monkeypatch):
    """ABSA_PRIVATE_NETWORK=inside leaked into a process that has the host's interfaces: dropped, so nothing claims
    a private network that is not there."""
    monkeypatch.setattr(netns, "interfaces", lambda pid="self": ["lo", "eth0"])  # as the host's (make test runs
    monkeypatch.setenv(netns.ENV, netns.INSIDE)                                  # in a loopback-only one)
    monkeypatch.setattr(netns, "entry_argv", None)  # in-process: it must not exec
    assert netns.isolate(None, local=False) is None
    assert netns.ENV not in os.environ


def test_a_command_started_inside_another_ones_namespace_makes_its_own(monkeypatch):
    """The marker is inherited by everything the first command starts; another absa command among them shared its
    namespace, and its reaper, on exit, would have ended the first command's cluster (review)."""
    monkeypatch.setattr(netns, "interfaces", lambda pid="self": ["lo"])
    monkeypatch.setenv(netns.ENV, netns.INSIDE)
    monkeypatch.setenv(netns.OWNER, str(os.getpid() + 1))  # made by another process
    monkeypatch.setattr(netns, "entry_argv", None)  # in-process: it must not exec
    assert netns.isolate(None, local=False) is None
    assert netns.ENV not in os.environ and netns.OWNER not in os.environ
    assert reaper.namespace_mates(os.getpid()) == {}  # and a reaper would empty no namespace it did not make


def test_the_re_run_is_this_command_again(monkeypatch):
    monkeypatch.setattr(netns, "entry_argv", ["train", "quickstart", "epochs=2"])
    monkeypatch.setattr(sys, "argv", ["/venv/bin/absa", "train", "quickstart", "epochs=2"])
    assert netns._command()[-4:] == ["/venv/bin/absa", "train", "quickstart", "epochs=2"]
    assert netns._command()[0] == sys.executable
    monkeypatch.setattr(sys, "argv", ["/src/absa_cli/__main__.py", "train", "quickstart", "epochs=2"])
    assert netns._command()[-5:] == ["-m", "absa_cli", "train", "quickstart", "epochs=2"]
