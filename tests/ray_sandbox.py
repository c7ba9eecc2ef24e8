"""Ray clusters started by hand, as a user would (``ray start --head``, ``ray start --address``), for tests — each
inside a sandbox of its own.

The sandbox is ``unshare --user --map-root-user --net --pid --fork --mount-proc``: a network namespace whose only
interface is loopback (nothing a test starts can be reached from, or reach, another machine, as with absa's own
local cluster) and a PID namespace, so that every process a scenario starts dies with it, whatever happens. Inside,
each node is one ``ray start --block`` in a session of its own, stopped or killed through its own process group —
never ``ray stop``, which would stop every Ray process of the machine. ``HOME`` is a folder of the scenario's, so
that Ray's token file (``~/.ray/auth_token``) is the scenario's and the user's is never read or written.

A test marked ``@pytest.mark.sandbox("placement")`` asks the session's ``sandboxes`` fixture (tests/conftest.py) for
that scenario's result; the scenario (a function below) runs inside its sandbox and returns a dict, which comes back
as JSON on the last line of its output. The scenarios a session selected run two at a time (``Scenarios``).
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
from concurrent.futures import ThreadPoolExecutor, wait
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


def run(scenario: str, workdir: Path, **params) -> dict:
    """Run a scenario in a fresh sandbox; its result, or an AssertionError carrying the sandbox's output."""
    timeout_s = SCENARIOS[scenario][1]
    done = subprocess.run([*SANDBOX, sys.executable, __file__, scenario, str(workdir), json.dumps(params)],
                          capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines or not lines[-1].startswith("{"):
        raise AssertionError(f"scenario {scenario} ended with {done.returncode}:\n{done.stdout[-4000:]}\n"
                             f"{done.stderr[-4000:]}")
    return json.loads(lines[-1])


def scenario(*, timeout_s: float, alone_s: float):
    """A scenario, its time limit, and about how long it takes alone here (the longest are started first)."""
    def register(function):
        SCENARIOS[function.__name__] = (function, timeout_s, alone_s)
        return function
    return register


class Scenarios:
    """The scenarios a test session selected, each in a sandbox of its own, two at a time: each is mostly waiting
    (nodes starting, a node's death being noticed), so on 2 cores the five take ~95 s together where they took ~130 s
    one after another. The first test to ask for one waits for them all, so no other test runs beside them (other
    tests' timings stay those of a machine running one thing; a scenario's own bounds, e.g. a submission within
    20 s, hold with another scenario beside it: measured at 25 s for the whole job scenario paired, 20 s alone). A
    scenario no test was marked with runs when asked for, alone."""

    def __init__(self, selected: set[str], workdir) -> None:
        self.selected, self.workdir = selected, workdir  # workdir(name) -> a fresh folder
        self.done: dict = {}

    def result(self, name: str) -> tuple[Path, dict]:
        """The scenario's folder and result; its failure (an AssertionError) is raised in the test that asked."""
        if not self.done:
            wanted = sorted(self.selected | {name}, key=lambda each: -SCENARIOS[each][2])
            pool = ThreadPoolExecutor(max_workers=2)
            try:
                folders = {each: self.workdir(each) for each in wanted}
                self.done = {each: (folders[each], pool.submit(run, each, folders[each])) for each in wanted}
                wait([future for _, future in self.done.values()])
            finally:  # a Ctrl-C of the session: the scenarios not started yet never start
                pool.shutdown(wait=False, cancel_futures=True)
        if name not in self.done:
            folder = self.workdir(name)
            with ThreadPoolExecutor(max_workers=1) as pool:
                self.done[name] = (folder, pool.submit(run, name, folder))
        folder, future = self.done[name]
        return folder, future.result()


# ---- inside the sandbox -----------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Node:
    """One Ray node: ``ray start ... --block`` in a session (process group) of its own."""

    def __init__(self, workdir: Path, name: str, *, cpus: int, gpus: int = 0, head: str | None = None,
                 resources: dict | None = None, env: dict | None = None, args: tuple[str, ...] = (),
                 port: int | None = None) -> None:
        self.name, self.port = name, (port or free_port()) if head is None else None
        self.address = f"127.0.0.1:{self.port}" if head is None else head
        command = [str(BIN / "ray"), "start", "--block", "--num-cpus", str(cpus), "--num-gpus", str(gpus),
                   "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
        if head is None:
            command += ["--head", "--port", str(self.port), "--temp-dir", str(workdir)]
            if "--include-dashboard" not in args:
                command += ["--include-dashboard", "false"]
        else:
            command += ["--address", head]
        if resources:
            command += ["--resources", json.dumps(resources)]
        command += args
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
        """SIGTERM to ``ray start`` alone, as a user stops it: it drains the node and ends what it started. (SIGTERM
        to the whole group would end the GCS first, and the head's drain request would then wait 30 s for it.)"""
        self.process.send_signal(signal.SIGTERM)
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
        result = SCENARIOS[name][0](work, scratch / "ray", **json.loads(params))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(result), flush=True)


# ---- scenarios --------------------------------------------------------------------------------------------------

TINY = ["epochs=1", "data.train_size=256", "data.test_size=128", "batch.global_batch_size=64",
        "policy.max_global_batch=64", "batch.per_worker_max=32", "logging.chunk_steps=2",
        "probe.batch_size=32"]


@scenario(timeout_s=600, alone_s=23)
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


@scenario(timeout_s=900, alone_s=37)
def node_added_then_lost(work: Path, temp: Path) -> dict:
    """Two runs on the same two nodes of one CPU each (one sandbox, one head: starting them is most of the cost).

    ``added``: the run starts on the head alone (one worker, accumulating two micro-batches per step); a second
    node joins during epoch 1 and the run must grow onto it. ``lost``: with both nodes up, a second run takes one
    worker on each; the second node dies (every process SIGKILLed) in the middle of epoch 2, and the run must
    re-form live on the head and finish."""
    head = Node(temp, "head", cpus=1)
    second = None
    results = {}
    try:
        wait_for_nodes(head.address, 1)
        added = work / "added"
        added.mkdir()
        process = _elastic_run(head, added, "epochs=8")  # long enough for a node to start during it, under load too
        _wait_for(lambda: _steps_applied(added, 0) >= 1, process, "epoch 1 was under way")
        second = Node(temp, "second", cpus=1, head=head.address)
        wait_for_nodes(head.address, 2)
        joined_at = _steps_applied(added, 0)
        _wait_for(lambda: len(list((added / "audit").glob("samples-pid*"))) == 2, process, "a second worker")
        second_pids = second.pids()
        results["added"] = {**_finish(process, added), "joined_after_steps": joined_at,
                            "second_node_pids": second_pids, "workers": _workers(added)}

        lost = work / "lost"
        lost.mkdir()
        _wait_for_slots(head.address, 2)  # the first run's workers have given their CPUs back
        process = _elastic_run(head, lost)
        _wait_for(lambda: _steps_applied(lost, 1) >= 3, process, "epoch 2 was under way")
        workers = _workers(lost)
        killed = second.crash()
        result = _finish(process, lost)
        results["lost"] = {**result, "workers": workers, "second_node_pids": killed,
                           "second_node_survivors": [pid for pid in killed if _running(pid)]}
    finally:
        if second is not None:
            second.stop()
        head.stop()
    return results


def _workers(work: Path) -> list[int]:
    """The pids of a run's workers, from their sample-audit files (``samples-pid<PID>.jsonl``)."""
    return sorted(int(p.stem.removeprefix("samples-pid")) for p in (work / "audit").glob("samples-pid*"))


def _wait_for_slots(address: str, cpus: float, timeout_s: float = 60) -> None:
    """Until the cluster has ``cpus`` CPUs free (a finished run's actors are reclaimed within seconds)."""
    import ray

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        deadline = time.monotonic() + timeout_s
        while ray.available_resources().get("CPU", 0) < cpus:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{cpus} CPUs not free after {timeout_s} s: {ray.available_resources()}")
            time.sleep(0.2)
    finally:
        ray.shutdown()


def _group_nodes(group) -> list[str]:
    """The node id of each of a group's workers, in rank order."""
    return [group._workers[actor._actor_id.hex()]["node_id"] for actor in group.actors]


def _slots_held() -> int:
    from ray.util import placement_group_table

    return sum(1 for entry in placement_group_table().values() if entry["state"] == "CREATED")


@scenario(timeout_s=400, alone_s=31)
def placement(work: Path, temp: Path) -> dict:
    """Two nodes of two CPUs; a group of two workers under each strategy, then grown to three and shrunk to two:
    where each worker lands, which survivors kept their process, and how many slots the run holds. Then a node that
    declares a GPU without CUDA."""
    import ray

    from absa_cli import config as config_mod
    from absa_cli.cluster.group import RayWorkerGroup

    head = Node(temp, "head", cpus=2)
    second = third = None
    results: dict = {}
    try:
        wait_for_nodes(head.address, 1)
        second = Node(temp, "second", cpus=2, head=head.address)
        wait_for_nodes(head.address, 2)
        ray.init(address=head.address)
        for strategy in ("pack", "spread"):
            config = config_mod.load("quickstart", [*TINY, "cluster.max_workers=3", f"cluster.placement={strategy}"])
            group = RayWorkerGroup(config)
            try:
                group.resize(2)
                two = _group_nodes(group)
                pids = [group._workers[actor._actor_id.hex()]["pid"] for actor in group.actors]
                group.resize(3)
                three = _group_nodes(group)
                held_three = _slots_held()
                group.resize(2)
                after = [group._workers[actor._actor_id.hex()]["pid"] for actor in group.actors]
                results[strategy] = {"two": two, "three": three, "held_three": held_three, "held_two": _slots_held(),
                                     "survivors_kept": after == pids}
            finally:
                group.close()
            results[strategy]["held_after_close"] = _slots_held()
            deadline = time.monotonic() + 30  # removing a placement group returns its CPU a moment later
            while ray.available_resources().get("CPU", 0) < 4 and time.monotonic() < deadline:
                time.sleep(0.2)
        # A third node declares a GPU on this machine, where torch sees none: a cluster with a GPU gives every worker
        # a GPU slot, so the worker lands there, trains on the CPU, and the group says so once.
        third = Node(temp, "gpu", cpus=1, gpus=1, head=head.address)
        wait_for_nodes(head.address, 3)
        group = RayWorkerGroup(config_mod.load("quickstart", TINY))
        try:
            group.resize(1)
            results["gpu"] = {"resource": group.resource, "first": group.notices(), "again": group.notices(),
                              "device": group._workers[group.actors[0]._actor_id.hex()]["device"]}
        finally:
            group.close()
        ray.shutdown()
    finally:
        for node in (third, second):
            if node is not None:
                node.stop()
        head.stop()
    return results


def _autoscaling_head(temp: Path, work: Path, worker_cpus: int, max_nodes: int) -> Node:
    """A head of one CPU whose autoscaler launches fake nodes (``worker_cpus`` CPUs each, at most ``max_nodes``) on
    this machine, Ray's own simulated autoscaling cluster (``RAY_FAKE_CLUSTER``): each node is a real raylet."""
    port = free_port()
    config = {
        "cluster_name": "absa-fake", "max_workers": max_nodes, "upscaling_speed": 1.0, "idle_timeout_minutes": 5,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{port}"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            "ray.worker.cpu": {"resources": {"CPU": worker_cpus}, "node_config": {}, "min_workers": 0,
                               "max_workers": max_nodes}},
        "head_node_type": "ray.head.default", "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [],
        "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": []}
    path = work / "autoscaler.json"
    path.write_text(json.dumps(config))
    head = Node(temp, "head", cpus=1, port=port, args=(f"--autoscaling-config={path}",),
                env={"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})
    return head


@scenario(timeout_s=600, alone_s=18)
def autoscaling(work: Path, temp: Path) -> dict:
    """The run wants two workers; the head has room for one. absa starts on the head, asks the autoscaler for two,
    and grows onto the node it adds."""
    head = _autoscaling_head(temp, work, worker_cpus=1, max_nodes=2)
    try:
        wait_for_nodes(head.address, 1)
        process = _elastic_run(head, work)
        result = _finish(process, work)
        nodes = alive_nodes(head.address)
    finally:
        head.stop()
    return {**result, "alive_nodes_at_end": nodes}


@scenario(timeout_s=500, alone_s=20)
def submitted_job(work: Path, temp: Path) -> dict:
    """A head with its dashboard (the Jobs API) and a Prometheus export port, as a Ray user runs one on a machine
    where a token exists (any local cluster writes one, absa's too), so the head wants it; `absa train --submit`
    sends a run to it, once from a HOME without the token. While the job runs, the run's figures are scraped from
    the export; afterwards the job's status, metadata and logs, Ray's actor list, and the workers' log prefixes."""
    import urllib.request

    os.environ["RAY_AUTH_MODE"] = "token"  # for this process's own requests (before Ray is imported)
    (work / "home" / ".ray").mkdir(parents=True)
    (work / "home" / ".ray" / "auth_token").write_text("absa0test0token0" + os.urandom(8).hex())

    from ray.job_submission import JobStatus, JobSubmissionClient
    from ray.util.state import list_actors

    dashboard, metrics = free_port(), free_port()
    head = Node(temp, "head", cpus=2, args=("--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                                             "--dashboard-port", str(dashboard), "--metrics-export-port", str(metrics)),
                env={"PATH": f"{BIN}:{os.environ['PATH']}", "RAY_metrics_report_interval_ms": "1000"})
    address = f"http://127.0.0.1:{dashboard}"
    result: dict = {}
    try:
        wait_for_nodes(head.address, 1)
        deadline = time.monotonic() + 60
        while True:  # the dashboard starts after the node registers
            try:
                client = JobSubmissionClient(address)
                break
            except Exception:  # noqa: BLE001
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        train = ["train", "quickstart", *TINY, "epochs=2", "data.train_size=512",  # policy abs: it probes
                 "batch.global_batch_size=32", "batch.per_worker_max=16", "policy.max_global_batch=64",
                 "logging.chunk_steps=1", "--max-gpus", "2", "--submit", "--address", address,
                 "--runs-dir", str(work / "runs")]
        (work / "bare-home").mkdir()
        result["no_token"] = absa(*train, env={"HOME": str(work / "bare-home")})
        submit = absa(*train)
        result["submit"] = submit
        job_id = next(line.split()[2] for line in submit["stdout"].splitlines() if line.startswith("submitted:"))
        run_id = job_id.removeprefix("absa-")
        families: set[str] = set()
        deadline = time.monotonic() + 300
        while client.get_job_status(job_id) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read().decode()
                families |= {line.split("{")[0] for line in body.splitlines()
                             if line.startswith("ray_absa_") and f'run_id="{run_id}"' in line}
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the submitted job did not finish in 300 s")
            time.sleep(1)
        resumed = absa("resume", run_id, "--submit", "--address", address, "--runs-dir", str(work / "runs"))
        resume_id = next(line.split()[2] for line in resumed["stdout"].splitlines() if line.startswith("submitted:"))
        result["resume"] = {"job_id": resume_id, "metadata": client.get_job_info(resume_id).metadata}
        client.stop_job(resume_id)  # the run is finished: that job only refuses, there or here
        info = client.get_job_info(job_id)
        result.update(job_id=job_id, run_id=run_id, status=str(info.status), metadata=info.metadata,
                      logs=client.get_job_logs(job_id), families=sorted(families),
                      actors=[actor.name for actor in list_actors(address=address, limit=1000,
                                                                  raise_on_missing_output=False)],
                      run_json=json.loads((work / "runs" / run_id / "run.json").read_text()),
                      prefixes=sorted({line.strip() for log in temp.glob("session_*/logs/worker-*")
                                       for line in log.read_text(errors="replace").splitlines()
                                       if line.startswith(":actor_name:absa-")}))
    finally:
        head.stop()
    return result


if __name__ == "__main__":
    _main(*sys.argv[1:4])
