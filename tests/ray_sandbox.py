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

    def pids(self) -> list[int]:
        """Every process of this node: ``ray start`` and all it started (raylet, agents, the workers)."""
        import psutil

        root = psutil.Process(self.process.pid)
        return [root.pid, *(child.pid for child in root.children(recursive=True))]

    def crash(self) -> list[int]:
        """The node dies at once, as a machine would: SIGKILL to each of its processes."""
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()
        return pids

    def stop(self) -> None:
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.process.wait()


def _running(pid: int) -> bool:
    """A process that exists and is not a zombie (orphans of a killed node end as zombies of this sandbox's init)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


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


def _elastic_run(head: Node, work: Path, *extra: str) -> subprocess.Popen:
    """`absa train` on the cluster: fixed batch 32, at most 16 per worker (two workers wanted), every applied and
    dropped sample logged by the workers in ``work/audit``."""
    (work / "audit").mkdir()
    command = [sys.executable, "-m", "absa_cli", "train", "quickstart", *TINY, "epochs=3", "data.train_size=1000",
               "policy.name=fixed", "batch.global_batch_size=32", "batch.per_worker_max=16",
               "policy.max_global_batch=32", "logging.chunk_steps=1", "cluster.collective_timeout_s=30",
               f"logging.sample_log_dir={work / 'audit'}", "--max-gpus", "2", "--address", head.address,
               "--runs-dir", str(work / "runs"), *extra]
    return subprocess.Popen(command, stdout=(work / "absa.log").open("w"), stderr=subprocess.STDOUT, cwd=ROOT,
                            env=_env(None))


def _wait_for(condition, process: subprocess.Popen, what: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            raise TimeoutError(f"absa ended (or {timeout_s} s passed) before {what}")
        time.sleep(0.1)


def _steps_applied(work: Path, epoch: int) -> int:
    return sum(1 for log in (work / "audit").glob("samples-pid*.jsonl")
               for line in log.read_text().splitlines() if f'"epoch": {epoch},' in line and "dropped" not in line)


def _finish(process: subprocess.Popen, work: Path, timeout_s: float = 300) -> dict:
    try:
        rc = process.wait(timeout=timeout_s)
    finally:
        process.kill()
    return {"rc": rc, "log": (work / "absa.log").read_text(),
            "records": [json.loads(line) for path in (work / "runs").glob("*/metrics.jsonl")
                        for line in path.read_text().splitlines()],
            "status": [json.loads(path.read_text())["status"] for path in (work / "runs").glob("*/run.json")]}


@scenario
def node_lost_mid_epoch(work: Path, temp: Path) -> dict:
    """Two nodes of one CPU each, one worker on each; the second node dies (every process SIGKILLed) in the middle
    of epoch 2. The run must re-form live on the head and finish."""
    head = Node(temp, "head", cpus=1)
    second = None
    try:
        wait_for_nodes(head.address, 1)
        second = Node(temp, "second", cpus=1, head=head.address)
        wait_for_nodes(head.address, 2)
        process = _elastic_run(head, work)
        _wait_for(lambda: _steps_applied(work, 1) >= 3, process, "epoch 2 was under way")
        workers = sorted(int(p.stem.removeprefix("samples-pid")) for p in (work / "audit").glob("samples-pid*"))
        killed = second.crash()
        result = _finish(process, work)
        survivors = [pid for pid in killed if _running(pid)]
    finally:
        if second is not None:
            second.stop()
        head.stop()
    return {**result, "workers": workers, "second_node_pids": killed, "second_node_survivors": survivors}


@scenario
def node_added_mid_run(work: Path, temp: Path) -> dict:
    """A head of one CPU: the run starts on one worker (accumulating two micro-batches per step); a second node
    joins during epoch 1 and the run must grow onto it."""
    head = Node(temp, "head", cpus=1)
    second = None
    try:
        wait_for_nodes(head.address, 1)
        process = _elastic_run(head, work, "epochs=6")  # long enough for a node to start during it
        _wait_for(lambda: _steps_applied(work, 0) >= 3, process, "epoch 1 was under way")
        second = Node(temp, "second", cpus=1, head=head.address)
        wait_for_nodes(head.address, 2)
        joined_at = _steps_applied(work, 0)
        _wait_for(lambda: len(list((work / "audit").glob("samples-pid*"))) == 2, process, "a second worker")
        second_pids = second.pids()
        result = _finish(process, work)
    finally:
        if second is not None:
            second.stop()
        head.stop()
    return {**result, "joined_after_steps": joined_at, "second_node_pids": second_pids,
            "workers": sorted(int(p.stem.removeprefix("samples-pid")) for p in (work / "audit").glob("samples-pid*"))}


if __name__ == "__main__":
    _main(*sys.argv[1:4])
