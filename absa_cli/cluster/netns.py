"""A private network for the local Ray cluster: absa re-runs itself in a new network namespace that has only a
loopback interface, so nothing the cluster opens can be reached from another machine.

Why: Ray 2.60's gRPC servers (GCS, raylet, every worker) and torch.distributed's rendezvous listen on all
interfaces whatever ``ray.init`` is told, and Ray's runtime-env agent binds the machine's external address. Inside
a namespace whose only interface is ``lo``, "all interfaces" is loopback, which is what a local cluster
needs and all it gets.

How: when the ``absa`` command (not an in-process caller such as a test's ``CliRunner``) is about to start a local
cluster, it ``exec``s ``unshare --user --map-root-user --net`` on its own command line, with ``ABSA_PRIVATE_NETWORK``
set to ``inside``. The process keeps its pid, terminal, signals and working directory; files it writes belong to
the same user (the namespace maps that user to root inside, nothing more). Inside, absa brings ``lo`` up before
anything else. No privileges are needed where unprivileged user namespaces are allowed (the Linux default); where
they are not (some hardened kernels, containers under a seccomp profile), absa says so in one line and runs as
before. A dataset download (``data.download=true``) needs the network, so it happens before the ``exec``.

``ABSA_PRIVATE_NETWORK=off`` opts out (e.g. to reach a Ray dashboard started by hand); a cluster joined with
``--address`` or ``RAY_ADDRESS``, and ``--local``, never use the namespace.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import struct
import subprocess
import sys

ENV = "ABSA_PRIVATE_NETWORK"
INSIDE = "inside"
OWNER = "ABSA_PRIVATE_NETWORK_OWNER"  # the pid that made the namespace (exec keeps it): only it is "inside" as owner
OFF = "off"

_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_IFREQ_SIZE = 40  # struct ifreq on 64-bit Linux: a 16-byte name and a 24-byte union

# Set by the console entry point (absa_cli.cli.app.main) to the command's own arguments: only a process that *is*
# the absa command may re-run itself; an in-process caller's sys.argv is somebody else's command line.
entry_argv: list[str] | None = None


def _command() -> list[str]:
    """This process's own command line, to run again: the interpreter with its flags (-X, -W, -O, ...), then the
    ``absa`` script as it was started, or ``-m absa_cli`` (from the same working directory, so the same
    ``sys.path[0]`` and the same package are imported)."""
    flags = subprocess._args_from_interpreter_flags()  # what multiprocessing uses to start a like interpreter
    script = sys.argv[0]
    if os.path.basename(script) == "__main__.py":
        return [sys.executable, *flags, "-m", "absa_cli", *(entry_argv or [])]
    return [sys.executable, *flags, script, *(entry_argv or [])]


def isolate(address: str | None, local: bool) -> str | None:
    """Called by a command before it may start a local Ray cluster.

    Returns a line to show the user, or None. Either returns (nothing to do, already inside, not possible here) or
    replaces the process (``exec``) with the same command inside a private network namespace.
    """
    if local or address or os.environ.get("RAY_ADDRESS") or sys.platform != "linux":
        return None
    mode = os.environ.get(ENV, "")
    if mode == INSIDE:
        if interfaces() == ["lo"] and os.environ.get(OWNER) == str(os.getpid()):
            loopback_up()
            return None
        # inherited: this process is not in absa's namespace, or is another command started inside it, whose
        # cluster (and reaper) must not share the namespace of the command that made it
        os.environ.pop(ENV, None)
        os.environ.pop(OWNER, None)
        mode = ""
    if mode.lower() == OFF or entry_argv is None:
        return None
    unshare = shutil.which("unshare")
    if unshare is None or not _namespaces_allowed(unshare):
        return ("ray: no private network namespace here (`unshare --user --net` is not available or not allowed); "
                "the local cluster's ports listen on all interfaces, token-authenticated (docs/cluster.md)")
    sys.stdout.flush()
    sys.stderr.flush()
    env = {**os.environ, ENV: INSIDE, OWNER: str(os.getpid())}
    # Without a network c10d's reverse lookup of every rendezvous peer fails (there is no DNS to ask), harmlessly,
    # and each failure would print a warning. Errors still print; a user's own setting wins.
    env.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    # gloo binds to the address the hostname resolves to, which /etc/hosts may map to a LAN address the namespace
    # does not have. lo is the namespace's only interface: a user's own choice (eth0, for multi-node work) would
    # leave the process group nothing to bind to.
    env.update(GLOO_SOCKET_IFNAME="lo", NCCL_SOCKET_IFNAME="lo")
    os.execve(unshare, [unshare, "--user", "--map-root-user", "--net", "--", *_command()], env)
    return None  # not reached


def _namespaces_allowed(unshare: str) -> bool:
    try:
        return subprocess.run([unshare, "--user", "--map-root-user", "--net", "true"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def loopback_up() -> None:
    """Set ``lo`` up (a new network namespace starts with it down): SIOCGIFFLAGS, then SIOCSIFFLAGS with IFF_UP."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH", b"lo", 0).ljust(_IFREQ_SIZE, b"\0")
        flags = struct.unpack_from("16sH", fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, request))[1]
        if not flags & _IFF_UP:
            fcntl.ioctl(sock.fileno(), _SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | _IFF_UP).ljust(_IFREQ_SIZE,
                                                                                                      b"\0"))


def interfaces(pid: int | str = "self") -> list[str]:
    """The network interfaces a process sees (``/proc/PID/net/dev``): ``['lo']`` inside absa's namespace."""
    with open(f"/proc/{pid}/net/dev") as handle:
        return [line.split(":", 1)[0].strip() for line in handle.readlines()[2:] if ":" in line]
