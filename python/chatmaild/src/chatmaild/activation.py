"""Socket activation: serve the listening socket systemd passed, and leave when idle.

Some daemons are needed only now and then: ``/new`` when someone sets up an
account, the metadata dict when a client connects or mail is delivered, the
last-login dict when someone logs in. Kept running, each costs a Python
interpreter with its libraries (25-40 MB) on a relay that is idle most of the
day. systemd can hold their listening sockets instead (a ``.socket`` unit) and
start the daemon when the first connection arrives; the daemon then serves
that socket and exits once it has had nothing to do for a while.

No request is lost on the way out. The daemon stops only when no connection
is open and no work is pending (a queued push notification keeps the
metadata daemon up), and it serves every connection it has accepted before it
exits. A connection that arrives later waits in the backlog of systemd's
socket, which systemd keeps open, and makes systemd start the daemon again.
A daemon that listens on a socket of its own never leaves: nobody would
start it again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3
"""The first file descriptor systemd passes (sd_listen_fds(3))."""

POLL_SECONDS_MAX = 5.0
"""How often an idle daemon looks whether it may leave (at least four times per idle window)."""
GRACE_SECONDS = 0.2
"""After the listener is closed: time for connections accepted a moment earlier to register."""

Address = str | Path | tuple[str, int]
"""A unix socket path, or a TCP (host, port)."""


def inherited_socket(expected: Address, environ: dict[str, str] | None = None) -> socket.socket | None:
    """The listening socket systemd passed to this process for ``expected``, or None.

    Follows sd_listen_fds(3): the descriptors start at 3, ``LISTEN_FDS``
    says how many, and ``LISTEN_PID`` must be this process (otherwise the
    variables were meant for a parent). The variables are removed so that
    no child takes them as its own. A passed socket bound elsewhere is a
    configuration error, and starting on the wrong socket would serve
    nobody: that raises.
    """
    env = os.environ if environ is None else environ
    pid, count = env.get("LISTEN_PID", ""), env.get("LISTEN_FDS", "")
    if not (pid.isascii() and pid.isdigit() and count.isascii() and count.isdigit()):
        return None
    if int(pid) != os.getpid() or int(count) < 1:
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(name, None)
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    bound = sock.getsockname()
    if isinstance(expected, tuple):
        host, port = expected
        matches = sock.family in (socket.AF_INET, socket.AF_INET6) and bound[1] == port and (
            _same_host(bound[0], host)
        )
        what = f"a TCP socket on {host}:{port}"
    else:
        matches = sock.family == socket.AF_UNIX and bound == str(expected)
        what = f"a unix stream socket {expected}"
    if sock.type != socket.SOCK_STREAM or not matches:
        sock.detach()
        raise ValueError(f"systemd passed a socket for {bound!r}, expected {what}")
    sock.setblocking(False)
    return sock


def _same_host(bound: str, wanted: str) -> bool:
    """``localhost`` in a configuration means the loopback address the socket is bound to."""
    if wanted == "localhost":
        return bound in ("127.0.0.1", "::1")
    return bound == wanted


async def wait_until_idle(
    seconds: float,
    busy: Callable[[], bool],
    activity: Callable[[], int],
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Return once ``busy()`` has been false and ``activity()`` unchanged for ``seconds``.

    ``busy`` says whether a connection is open or work is pending;
    ``activity`` is any counter that grows with each connection or request,
    so that a short request between two looks still counts as activity.
    Polling (a few times per window, at most every POLL_SECONDS_MAX) keeps
    this independent of how each server reports its connections.
    """
    poll = min(POLL_SECONDS_MAX, seconds / 4)
    quiet_since, seen = clock(), activity()
    while True:
        await asyncio.sleep(poll)
        now, count = clock(), activity()
        if busy() or count != seen:
            quiet_since, seen = now, count
        elif now - quiet_since >= seconds:
            return


async def drain(busy: Callable[[], bool], poll: float = 0.05) -> None:
    """After the listener is closed: wait until the connections accepted before are served."""
    await asyncio.sleep(GRACE_SECONDS)
    while busy():
        await asyncio.sleep(poll)
