"""Ray clusters started by hand, as a user would (``ray start --head``, ``ray start --address``), for tests — each
inside a sandbox of its own.

The sandbox is ``unshare --user --map-root-user --net --pid --fork --mount-proc``: a network namespace whose only
interface is loopback (nothing a test starts can be reached from, or reach, another machine, as with absa's own
local cluster) and a PID namespace, so that every process a scenario starts dies with it, whatever happens. Inside,
each node is one ``ray start --block`` in a session of its own, stopped or killed through its own process group —
never ``ray stop``, which would stop every Ray process of the machine. ``HOME`` is a folder of the scenario's, so
that Ray's token file (``~/.ray/auth_token``) is the scenario's and the user's is never read or written.

A test calls ``run(scenario, ...)``; the scenario (a function below) runs inside the sandbox and returns a dict, which
comes back as JSON on the last line of its output.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SANDBOX = ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--mount-proc"]
BIN = Path(sys.executable).parent
SCENARIOS = {}


def unavailable() -> str | None:
    """Why sandboxes cannot be made here, or None."""
    if shutil.which("unshare") is None:
        return "needs unshare (util-linux)"
    done = subprocess.run([*SANDBOX, "true"], capture_output=True, text=True)
    return None if done.returncode == 0 else f"user/net/pid namespaces not allowed here: {done.stderr.strip()}"


def run(scenario: str, workdir: Path, timeout_s: float, **params) -> dict:
    """Run a scenario in a fresh sandbox; its result, or an AssertionError carrying the sandbox's output."""
    done = subprocess.run([*SANDBOX, sys.executable, __file__, scenario, str(workdir), json.dumps(params)],
                          capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines or not lines[-1].startswith("{"):
        raise AssertionError(f"scenario {scenario} ended with {done.returncode}:\n{done.stdout[-4000:]}\n"
                             f"{done.stderr[-4000:]}")
    return json.loads(lines[-1])


def scenario(function):
    SCENARIOS[function.__name__] = function
    return function


# ---- inside the sandbox -----------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Node:
    """One Ray node: ``ray start ... --block`` in a session (process group) of its own."""

    def __init__(self, workdir: Path, name: str, *, cpus: int, head: str | None = None,
                 resources: dict | None = None, env: dict | None = None) -> None:
        self.name, self.port = name, free_port() if head is None else None
        self.address = f"127.0.0.1:{self.port}" if head is None else head
        command = [str(BIN / "ray"), "start", "--block", "--num-cpus", str(cpus), "--num-gpus", "0",
                   "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
        if head is None:
            command += ["--head", "--port", str(self.port), "--include-dashboard", "false",
                        "--temp-dir", str(workdir)]
        else:
            command += ["--address", head]
        if resources:
            command += ["--resources", json.dumps(resources)]
        self.log = workdir.parent / f"{name}.log"
        self.process = subprocess.Popen(command, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
                                        start_new_session=True, env=_env(env))

    def signal(self, number: int) -> None:
        try:
            os.killpg(self.process.pid, number)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.process.wait()


def alive_nodes(address: str) -> int:
    from ray._raylet import GcsClient

    infos = GcsClient(address=address).get_all_node_info(timeout=5).values()
    return sum(1 for info in infos if info.state == 0)  # GcsNodeInfo.ALIVE


def wait_for_nodes(address: str, count: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if alive_nodes(address) == count:
                return
        except Exception:  # noqa: BLE001 - the head is still starting
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the cluster at {address} did not reach {count} alive node(s) in {timeout_s} s")
        time.sleep(0.5)


def _env(extra: dict | None) -> dict:
    """A child's environment: this process's, without the client settings a scenario uses for itself."""
    env = {key: value for key, value in os.environ.items() if key != "RAY_AUTH_MODE"}
    return {**env, **(extra or {})}


def absa(*args: str, env: dict | None = None, timeout_s: float = 300) -> dict:
    """Run the absa command; its exit code, stderr, stdout and wall time."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "absa_cli", *args], capture_output=True, text=True,
                          timeout=timeout_s, env=_env(env), cwd=ROOT)
    return {"rc": done.returncode, "stderr": done.stderr, "stdout": done.stdout,
            "seconds": round(time.monotonic() - started, 2)}


def _main(name: str, workdir: str, params: str) -> None:
    from absa_cli.cluster.netns import loopback_up

    loopback_up()
    work = Path(workdir)
    home = work / "home"
    home.mkdir(parents=True, exist_ok=True)
    os.environ.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0", TORCH_CPP_LOG_LEVEL="ERROR")
    os.environ.pop("RAY_ADDRESS", None)
    os.environ.pop("RAY_AUTH_MODE", None)
    scratch = Path(tempfile.mkdtemp(prefix="absa-", dir="/tmp"))  # Ray's socket paths must stay short
    try:
        result = SCENARIOS[name](work, scratch / "ray", **json.loads(params))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(result), flush=True)


# ---- scenarios --------------------------------------------------------------------------------------------------

TINY = ["epochs=1", "data.train_size=256", "data.test_size=128", "batch.global_batch_size=64",
        "policy.max_global_batch=64", "batch.per_worker_max=32", "logging.chunk_steps=2"]


@scenario
def token_and_versions(work: Path, temp: Path) -> dict:
    """A head with token authentication (a token in its HOME, as Ray makes one); clients without a token, with a
    wrong one, with the right one; then a head recording another Ray version."""
    os.environ["RAY_AUTH_MODE"] = "token"  # for this process's own requests (before Ray is imported)
    from ray._raylet import GcsClient

    token = "absa0test0token0" + os.urandom(8).hex()
    (work / "home" / ".ray").mkdir(parents=True)
    (work / "home" / ".ray" / "auth_token").write_text(token)
    head = Node(temp, "head", cpus=1)
    results = {}
    try:
        wait_for_nodes(head.address, 1, 60)  # runs with the token: this process's HOME is the head's
        bare = work / "bare-home"
        bare.mkdir()
        runs = str(work / "runs")
        train = ["train", "quickstart", *TINY, "--address", head.address, "--runs-dir", runs]
        results["no_token"] = absa(*train, env={"HOME": str(bare)})
        results["wrong_token"] = absa(*train, env={"HOME": str(bare), "RAY_AUTH_TOKEN": "not-the-token"})
        results["mode_disabled"] = absa(*train, env={"RAY_AUTH_MODE": "disabled"})
        results["runs_before_joining"] = (work / "runs").exists()
        results["token_in_home"] = absa(*train)
        results["statuses"] = [json.loads(path.read_text())["status"] for path in (work / "runs").glob("*/run.json")]
        GcsClient(address=head.address).internal_kv_put(
            b"CLUSTER_METADATA", json.dumps({"ray_version": "2.59.0", "python_version": "3.11.9"}).encode(),
            True, b"cluster", timeout=5)
        results["other_version"] = absa(*train)
    finally:
        head.stop()
    results["address"] = head.address
    return results


if __name__ == "__main__":
    _main(*sys.argv[1:4])
