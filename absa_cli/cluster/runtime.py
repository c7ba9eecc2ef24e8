"""Connecting to Ray: an existing cluster (``--address`` / ``RAY_ADDRESS``, e.g. under ``ray job submit``) or a
local one started here.

The local cluster starts no dashboard; ``absa_cli.cluster.reaper`` stops
it when the driver exits, however it exits. Ray 2.60's own gRPC servers (GCS,
raylet, workers) nevertheless listen on all interfaces, protected by Ray's token authentication; binding them to
loopback only is not possible through ``ray.init`` in this version, so the ``absa`` command starts its local
cluster inside a private network namespace whose only interface is loopback (``absa_cli.cluster.netns``).
"""

from __future__ import annotations

import logging
import os
import socket
from contextlib import contextmanager, nullcontext
from typing import Callable, ContextManager, Iterator

import ray
import ray.job_config

from absa_cli.cluster import handshake, netns, reaper
from absa_cli.errors import UserError, first_line

# The local cluster's node address inside absa's private namespace. Ray replaces 127.0.0.1 and "localhost" by its
# guess at this machine's external address: a probe towards 8.8.8.8, else the address the hostname resolves to. In
# the namespace the probe fails (a warning line), and where /etc/hosts maps the hostname to a LAN address (Docker
# containers, cloud VMs) the cluster was told an address the namespace does not have: its start hung for good. Any
# other loopback address Ray takes as given (Linux routes all of 127.0.0.0/8 to lo). Outside the namespace Ray's
# guess names an address the machine has, as Ray intends.
NAMESPACE_NODE_IP = "127.0.0.2"


def is_host_port(address: str) -> bool:
    """``HOST:PORT`` (a head's GCS address), as opposed to ``auto``, ``local`` or a ``ray://`` URL."""
    _, colon, port = address.rpartition(":")
    return bool(colon) and port.isdigit() and "/" not in address


def check_reachable(address: str, timeout_s: float = 3.0, given: str = "--address ") -> None:
    """One line within seconds for an address absa cannot join: a dashboard's ``http(s)://`` URL (the Jobs API's,
    for ``--submit``), Ray Client's ``ray://`` (absa's driver is not tested through it: it would wait 30 s and more
    for a silent port, behind Ray's own warnings), a port out of range, nothing listening at ``HOST:PORT`` (Ray
    itself retries for minutes). ``auto`` is left to Ray. ``given``: where the address came from, as the user set it
    (``--address`` or ``RAY_ADDRESS``)."""
    scheme = address.partition("://")[0].lower() if "://" in address else ""
    if scheme in ("http", "https"):
        raise UserError(f"{given}{address} is a dashboard's address, which serves the Jobs API: add --submit to "
                        f"run the driver there as a Ray job, or give the head's GCS address (HOST:6379) to drive the "
                        f"run from here")
    if scheme == "ray":
        raise UserError(f"{given}{address} is Ray Client's address, which absa does not use: give the head's GCS "
                        f"address (HOST:6379) to drive the run from here, or its dashboard's with --submit "
                        f"(http://HOST:8265) to run the driver on the cluster")
    if not is_host_port(address):
        return
    host, _, port = address.rpartition(":")
    if not 0 < int(port) < 65536:
        raise UserError(f"{given}{address}: port {port} is not a TCP port (1–65535); the head's GCS port is "
                        f"6379 unless `ray start --head --port` said otherwise")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return
    except OSError as exc:
        reason = "nothing listens there" if isinstance(exc, ConnectionRefusedError) else first_line(exc)
        raise UserError(f"cannot reach a Ray cluster at {address} ({reason}); start a head there with "
                        f"`ray start --head --port {port}`, check --address or RAY_ADDRESS, or leave both unset to "
                        f"start a local cluster") from None


def connect(address: str | None = None, num_cpus: int | None = None, metadata: dict[str, str] | None = None,
            guard: Callable[[], ContextManager] = nullcontext) -> str:
    """Initialise Ray once per process; returns a one-line description of the cluster. ``metadata``: the job's
    (``ray list jobs``, the dashboard), e.g. the run id; a job submitted through Ray Jobs keeps its own as well.
    ``guard``: what ``ray.init`` runs inside (the CLI holds Ctrl-C there: a KeyboardInterrupt raised while Ray builds
    its core worker leaves one that crashes Ray's exit hook); the reachability check and the handshake before it
    stay interruptible."""
    if ray.is_initialized():
        return "ray: already connected"
    job = ray.job_config.JobConfig(metadata=metadata or {})
    given = "--address " if address else "RAY_ADDRESS="
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        check_reachable(address, given=given)
        if is_host_port(address) and handshake.ask(address).token:
            handshake.send_token()
        try:
            with guard():
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True, job_config=job)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserError(f"cannot connect to the Ray cluster at {address} ({first_line(exc, limit=200)}); check "
                            f"--address or RAY_ADDRESS, or leave both unset to start a local cluster") from None
        where = f"ray: connected to {address}"
    else:
        # "local": a new cluster even where `ray start` left this machine's default address behind (Ray would
        # otherwise join that cluster, which is not what leaving --address unset means).
        # The absa command's cluster goes when the command does, even SIGKILLed; not an in-process caller's (a
        # notebook, a test), whose other children are not absa's to end.
        if netns.entry_argv is not None:
            reaper.start()
        inside = os.environ.get(netns.ENV) == netns.INSIDE
        with _quiet("ray._private.authentication.authentication_token_setup"), guard():
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                     _node_ip_address=NAMESPACE_NODE_IP if inside else "127.0.0.1", logging_level=logging.WARNING,
                     log_to_driver=True, configure_logging=True, job_config=job)
        where = f"ray: started a local cluster on {ray.util.get_node_ip_address()}"
        if inside:
            where += " in a private network namespace (loopback only)"
    resources = ray.cluster_resources()
    return f"{where} ({int(resources.get('CPU', 0))} CPU, {int(resources.get('GPU', 0))} GPU)"


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Only errors from ``logger_name`` meanwhile. For the local cluster: Ray's notice that token authentication is
    on, which ends "Set RAY_AUTH_MODE=disabled to opt out" (docs/cluster.md says what protects the cluster)."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
