"""``absa train PRESET --submit --address http://HEAD:8265``: the run as a Ray job, driven on the cluster.

The command line is checked here first (the preset, the overrides, the schedule: bad input is one line before
anything is sent), a run id is drawn here, and the job's entrypoint is the same ``absa train`` (or ``absa resume``)
with that run id and a runs directory on the cluster, so the job id, the run id and the run directory are known —
and printed, with how to follow, stop and resume — before the terminal lets go. The job carries the run id and the
preset in its metadata (``ray job list``) and its submission id is ``absa-<run id>``.

The Jobs API comes with ``ray[default]`` (absa's ``cluster`` extra). absa must be installed on the cluster's head
node, where Ray runs a job's entrypoint. A head with token authentication guards its Jobs API too: absa sends this
machine's token when the head asks for one, on the rule of ``absa_cli.cluster.handshake``, and the ``ray job``
commands it prints then carry ``RAY_AUTH_MODE=token``, without which Ray's CLI would not send it.
"""

from __future__ import annotations

import os
import shlex
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from absa_cli.cluster import handshake
from absa_cli.errors import UserError, first_line

# On the cluster, unless ABSA_RUNS_DIR is set there: a path that does not depend on the job's working directory
CLUSTER_RUNS_DIR = '"${ABSA_RUNS_DIR:-$HOME/absa-runs}"'
# ray job stop's grace before SIGKILL (Ray's default 3 s): time for the stop checkpoint of a large model
STOP_GRACE_S = 60


@dataclass(frozen=True)
class Submitted:
    job_id: str
    run_id: str
    address: str
    runs_dir: str  # as the entrypoint names it (the cluster's shell expands it)
    token: bool = False  # absa sent this machine's token (RAY_AUTH_MODE unset here): Ray's CLI must be told to

    def lines(self, resume_hint: bool = True) -> list[str]:
        where = ("$ABSA_RUNS_DIR (else ~/absa-runs) on the head node" if self.runs_dir == CLUSTER_RUNS_DIR
                 else f"{self.runs_dir} on the head node")
        runs_opt = "" if self.runs_dir == CLUSTER_RUNS_DIR else f" --runs-dir {shlex.quote(self.runs_dir)}"
        ray = "RAY_AUTH_MODE=token ray" if self.token else "ray"
        lines = [f"submitted: job {self.job_id} to {self.address} (run {self.run_id}); this terminal may close",
                 f"  follow: {ray} job logs --follow {self.job_id} --address {self.address}",
                 f"  stop:   {ray} job stop {self.job_id} --address {self.address}   (checkpoints; the run stays "
                 f"resumable)",
                 f"  run directory: {where}; there, `absa runs show {self.run_id}{runs_opt}`"]
        if resume_hint:
            lines.append(f"  resume: absa resume {self.run_id} --submit --address {self.address}{runs_opt}")
        return lines


def check_address(address: str | None) -> str:
    """The dashboard's HTTP address the Jobs API answers on, or one line saying what to give."""
    if not address:
        raise UserError("--submit needs the head's dashboard address: --address http://HEAD:8265 (or "
                        "RAY_ADDRESS=http://HEAD:8265)")
    parsed = urlparse(address)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UserError(f"--submit needs the head's dashboard address, e.g. --address http://HEAD:8265; {address!r} "
                        f"is not an http(s) URL (HOST:6379 is the GCS address, which does not serve the Jobs API)")
    return address.rstrip("/")


def _client(address: str) -> tuple[Any, bool]:
    """A client of the Jobs API at ``address``, and whether it sends this machine's token."""
    try:
        from ray.exceptions import AuthenticationError
        from ray.job_submission import JobSubmissionClient
    except ImportError:
        raise UserError("--submit needs Ray's Jobs API: pip install 'absa-train[cluster]' (ray[default])") from None
    parsed = urlparse(address)
    try:  # requests has no deadline of its own: a silent port would hang the command
        socket.create_connection((parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)),
                                 timeout=3.0).close()
    except OSError as exc:
        reason = "nothing listens there" if isinstance(exc, ConnectionRefusedError) else first_line(exc)
        raise UserError(f"cannot reach the Ray dashboard at {address} ({reason}); the head serves the Jobs API "
                        f"with ray[default] installed, on port 8265 (`ray start --head --dashboard-host 0.0.0.0`)"
                        ) from None
    for token in (False, True):  # with this machine's token only once the head has asked for one (handshake's rule)
        if token:
            handshake.send_token()
        try:
            return JobSubmissionClient(address), token
        except AuthenticationError:
            if token or not handshake.token_to_send():
                raise UserError(handshake.auth_message(address, handshake.token_source(), "token" if token else
                                                       os.environ.get(handshake.AUTH_MODE))) from None
        except Exception as exc:  # noqa: BLE001 - refused, not a dashboard, a version the SDK rejects
            raise UserError(f"the Ray Jobs API at {address} did not answer ({first_line(exc, limit=200)}); give the "
                            f"head's dashboard address (`ray start --head --dashboard-host 0.0.0.0`, port 8265)"
                            ) from None
    raise AssertionError("not reached")


# Ray runs an entrypoint with the PATH `ray start` had on the head: without absa there, the job's log said only
# "/bin/sh: 1: absa: not found"
_NEEDS_ABSA = ("command -v absa >/dev/null 2>&1 || { echo \"error: absa is not on the PATH this head runs Ray jobs "
               "with (the PATH \\`ray start\\` had); install absa-train[cluster] in the environment that runs Ray "
               "there, or start Ray with that environment's bin folder on PATH\" >&2; exit 127; };")


def job_entrypoint(argv: list[str], runs_dir: str | None) -> str:
    """The shell command a job runs on the head: ``absa ARGV --runs-dir DIR``, after a check that absa is there."""
    runs = shlex.quote(runs_dir) if runs_dir else CLUSTER_RUNS_DIR
    return f"{_NEEDS_ABSA} {shlex.join(['absa', *argv])} --runs-dir {runs}"


def submit(address: str, argv: list[str], run_id: str, runs_dir: str | None, preset: str,
           submission_id: str | None = None) -> Submitted:
    """Submit ``absa <argv...> --runs-dir <runs_dir>`` as a job; ``argv`` carries the run id already."""
    address = check_address(address)
    client, token = _client(address)
    entrypoint = job_entrypoint(argv, runs_dir)
    try:
        job_id = client.submit_job(
            entrypoint=entrypoint, submission_id=submission_id,
            metadata={"absa_run_id": run_id, "absa_preset": preset},
            runtime_env={"env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S)}})
    except Exception as exc:  # noqa: BLE001 - e.g. a submission id in use: one line, nothing started
        raise UserError(f"the Ray Jobs API at {address} refused the job ({first_line(exc, limit=200)})") from None
    return Submitted(job_id, run_id, address, runs_dir or CLUSTER_RUNS_DIR, token)
