"""Before joining a Ray cluster at an explicit ``HOST:PORT``, absa asks its head who it is, in a child process with
a deadline, so that every way joining can fail is one line within seconds.

Why a child process: Ray's client, given a head it cannot talk to, retries inside native code that holds the GIL —
20 s and one warning a second for a head that wants a token, minutes for a port that accepts but is not a Ray head
(a dashboard, a Ray Client server) — and neither a deadline nor Ctrl-C can reach the Python thread meanwhile. A
child can be killed at its deadline, and takes the user's Ctrl-C with the parent.

What it settles:
- **Token authentication.** Ray 2.60 enables token authentication on a head whenever a token exists on that
  machine (``~/.ray/auth_token``, which Ray writes when it starts any local cluster), but a client given an
  explicit address sends its own token only if ``RAY_AUTH_MODE=token``. Where a head asks for a token, this
  machine has one (the ``RAY_AUTH_TOKEN`` variable, the file named by ``RAY_AUTH_TOKEN_PATH``, or
  ``~/.ray/auth_token``) and ``RAY_AUTH_MODE`` is unset, absa asks again with it. Only then: the token also guards
  this machine's own local clusters, so it is never handed to a head that did not ask for one (a head without
  authentication, a dashboard over plain http that is not this user's). ``RAY_AUTH_MODE`` set by the user is
  obeyed as it is. The same rule holds for the Jobs API (``--submit``, ``absa_cli.cluster.jobs``), which a head with
  token authentication guards too.
- **Versions.** Ray refuses a driver whose Ray or Python version (to the patch level, by default) differs from the
  head's; absa reads the head's versions and names both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from absa_cli.errors import UserError, first_line

AUTH_MODE = "RAY_AUTH_MODE"
DEADLINE_S = 5.0
_METADATA_KEY, _METADATA_NAMESPACE = b"CLUSTER_METADATA", b"cluster"  # where every Ray head records its versions


@dataclass(frozen=True)
class Head:
    ray_version: str | None  # None: the head did not record its versions
    python_version: str | None
    token: bool  # True: this machine's token was sent and accepted; the driver must send it too


def token_source() -> str | None:
    """Where Ray would find this machine's authentication token (in Ray's order), or None."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        return path if Path(path).expanduser().is_file() else None
    default = Path.home() / ".ray" / "auth_token"
    return "~/.ray/auth_token" if default.is_file() else None


def token_to_send() -> bool:
    """Whether absa may send this machine's token to a head that asks for one: it has one and ``RAY_AUTH_MODE`` is
    unset (see above)."""
    return os.environ.get(AUTH_MODE) is None and token_source() is not None


def ask(address: str, deadline_s: float = DEADLINE_S) -> Head:
    """The head's versions, and whether to send this machine's token (it asked for one); one ``UserError`` line for
    every refusal."""
    source = token_source()
    answer, send_token = _answer(address, dict(os.environ), deadline_s), False
    if "auth" in answer and token_to_send():
        answer, send_token = _answer(address, {**os.environ, AUTH_MODE: "token"}, deadline_s), True
    if "auth" in answer:
        raise UserError(auth_message(address, source, "token" if send_token else os.environ.get(AUTH_MODE)))
    if "error" in answer:
        raise UserError(f"cannot talk to the Ray head at {address} ({first_line(answer['error'] or 'no answer')}); "
                        f"check --address or RAY_ADDRESS, or leave both unset to start a local cluster")
    head = Head(answer.get("ray_version"), answer.get("python_version"), token=send_token)
    check_versions(address, head)
    return head


def _answer(address: str, env: dict[str, str], deadline_s: float) -> dict:
    """The child's answer (``_child``), run with ``env``."""
    try:
        done = subprocess.run([sys.executable, "-m", "absa_cli.cluster.handshake", address], env=env,
                              capture_output=True, text=True, timeout=deadline_s)
    except subprocess.TimeoutExpired:
        raise UserError(f"something at {address} accepts connections but did not answer as a Ray head within "
                        f"{deadline_s:.0f} s; give the head's GCS address (HOST:6379 unless `ray start --head "
                        f"--port` said otherwise), not the dashboard's (8265) or Ray Client's (10001)") from None
    lines = done.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {"error": done.stderr.strip()}


def auth_message(address: str, source: str | None, mode: str | None) -> str:
    """What to do when the head at ``address`` turned this machine away, given where its token came from and the
    ``RAY_AUTH_MODE`` it ran with."""
    fix = ("copy the head's ~/.ray/auth_token to this machine (or set RAY_AUTH_TOKEN to its contents; "
           "`ray get-auth-token` prints it on the head)")
    if mode is not None and mode.lower() != "token":
        then = f"absa then sends this machine's token, from {source}" if source else f"and {fix}"
        return f"the Ray cluster at {address} requires token authentication but RAY_AUTH_MODE={mode} here; " \
               f"unset it ({then})"
    if source is None:
        return f"the Ray cluster at {address} requires token authentication and this machine has no token; {fix}"
    return f"the Ray cluster at {address} rejected this machine's token (from {source}); {fix}"


def check_versions(address: str, head: Head) -> None:
    """Ray's own rule: the same Ray version, and the same Python to the patch level (unless
    ``RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL=minor``)."""
    import ray

    if head.ray_version is None:
        return
    here_python = ".".join(map(str, sys.version_info[:3]))
    level = 2 if os.environ.get("RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL", "patch") == "minor" else 3
    same_python = head.python_version.split(".")[:level] == here_python.split(".")[:level]
    if head.ray_version == ray.__version__ and same_python:
        return
    raise UserError(f"the Ray cluster at {address} runs Ray {head.ray_version} on Python {head.python_version}, this "
                    f"machine Ray {ray.__version__} on Python {here_python}; Ray needs both to match: run absa on a "
                    f"machine of the cluster (or through `ray job submit`), or install Ray {head.ray_version} on "
                    f"Python {head.python_version} here")


def send_token() -> None:
    """Make this process's Ray client send the machine's token (what ``RAY_AUTH_MODE=token`` does at start-up)."""
    from ray._raylet import Config

    os.environ[AUTH_MODE] = "token"
    Config.initialize("")  # Ray caches its configuration at import; this re-reads it (as Ray's own CLI does)


def _child(address: str) -> dict:
    """Runs in the child: one request to the head's GCS."""
    from ray._raylet import GcsClient  # Ray's own GCS client (what `ray status` uses)
    from ray.exceptions import AuthenticationError

    try:
        raw = GcsClient(address=address).internal_kv_get(_METADATA_KEY, namespace=_METADATA_NAMESPACE,
                                                          timeout=DEADLINE_S)
    except AuthenticationError as exc:
        return {"auth": str(exc)}
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        return {"error": f"{type(exc).__name__}: {exc}"}
    metadata = json.loads(raw) if raw else {}
    return {"ray_version": metadata.get("ray_version"), "python_version": metadata.get("python_version")}


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1])), flush=True)
