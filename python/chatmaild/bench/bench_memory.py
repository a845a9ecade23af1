#!/usr/bin/env python3
"""Measure the idle resident memory of every chatmaild daemon of one relay, and their sum.

A small relay (a Raspberry Pi, a 1 GB VPS) runs doveauth and filtermail twice
(outgoing and incoming) all the time, so their idle memory is a fixed cost of
every relay. This starts each one as a real process with a temporary
chatmail.ini (free loopback ports, sockets in a temporary directory), waits
until each serves, lets them settle and reads VmRSS from /proc.

chatmail-metadata, chatmail-lastlogin and chatmail-newemail are started by
systemd when a connection arrives on their socket and leave when idle
(units.nix). The benchmark does what systemd does: it holds each listening
socket, starts the daemon with the socket as file descriptor 3 when it sends
the first request, and measures how long that first answer takes (the cost
of starting on demand), the daemon's memory while it runs, and that it
leaves by itself (with a short --exit-when-idle). A daemon that has left
counts 0 in the idle sum, as on a relay. Every process is stopped before
the benchmark exits.

A measurement to read, not a test.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import pss_kib, report, stop, vm_rss_kib

DOMAIN = "bench.example.org"
START_TIMEOUT_SECONDS = 30.0
SETTLE_SECONDS = 1.0
IDLE_EXIT_SECONDS = 1.0
"""The bench's idle window for on-demand daemons (the units give them minutes)."""

# What systemd does between fork and exec: the socket onto fd 3, LISTEN_PID = own pid.
ACTIVATION_LAUNCHER = (
    "import os, sys; fd = int(sys.argv[1])\nif fd != 3: os.dup2(fd, 3); os.close(fd)\n"
    "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serving(target: int | Path) -> bool:
    """True once a TCP port on loopback, or a unix socket, accepts a connection."""
    family = socket.AF_UNIX if isinstance(target, Path) else socket.AF_INET
    address = str(target) if isinstance(target, Path) else ("127.0.0.1", target)
    with socket.socket(family) as sock:
        try:
            sock.connect(address)
        except OSError:
            return False
    return True


def first_answer(target: int | Path, request: bytes) -> bytes:
    """Send one request on a new connection and return the first bytes answered."""
    family = socket.AF_UNIX if isinstance(target, Path) else socket.AF_INET
    address = str(target) if isinstance(target, Path) else ("127.0.0.1", target)
    with socket.socket(family) as sock:
        sock.settimeout(START_TIMEOUT_SECONDS)
        sock.connect(address)
        sock.sendall(request)
        return sock.recv(4096)


def on_demand(
    name: str, argv: list[str], target: int | Path, request: bytes, env: dict[str, str]
) -> tuple[float, float, float]:
    """Start ``argv`` the way systemd does on the first connection to ``target``.

    Returns the first request's latency (start included) in seconds, the
    daemon's VmRSS in KiB while it runs, and its VmRSS once idle: 0 after it
    has left by itself.
    """
    if isinstance(target, Path):
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(target))
        listener.listen(16)
    else:
        listener = socket.create_server(("127.0.0.1", target))
    with listener:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-c", ACTIVATION_LAUNCHER, str(listener.fileno()), *argv,
             "--exit-when-idle", str(IDLE_EXIT_SECONDS)],
            pass_fds=(listener.fileno(),),
            env=env,
            stderr=None if os.environ.get("BENCH_DEBUG") else subprocess.DEVNULL,
        )
        try:
            answer = first_answer(target, request)
            latency = time.perf_counter() - started
            if not answer:
                raise SystemExit(f"{name} closed the first connection without an answer")
            running = vm_rss_kib(proc.pid)
            try:
                proc.wait(timeout=IDLE_EXIT_SECONDS * 10 + START_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                raise SystemExit(f"{name} did not leave when idle") from None
            if proc.returncode != 0:
                raise SystemExit(f"{name} left with status {proc.returncode}")
        finally:
            if proc.poll() is None:
                stop(proc)
    return latency, running, 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="accepted for run_all.py; the run is short anyway"
    )
    parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        work = Path(tmp)
        ports = {name: free_port() for name in ("out", "in", "http", "auth", "new", "r1", "r2")}
        ini = work / "chatmail.ini"
        ini.write_text(
            "[params]\n"
            f"mail_domain = {DOMAIN}\n"
            f"mailboxes_dir = {work / 'mail'}\n"
            f"nocreate_file = {work / 'nocreate'}\n"
            f"filtermail_smtp_port = {ports['out']}\n"
            f"filtermail_smtp_port_incoming = {ports['in']}\n"
            f"filtermail_http_port_incoming = {ports['http']}\n"
            f"postfix_reinject_port = {ports['r1']}\n"
            f"postfix_reinject_port_incoming = {ports['r2']}\n"
        )
        (work / "mail").mkdir()
        py = [sys.executable, "-m"]
        always: dict[str, tuple[list[str], int | Path]] = {
            "doveauth": (
                py + ["chatmaild.doveauth", str(ini), "--listen", f"127.0.0.1:{ports['auth']}",
                      "--token-file", str(work / "token")],
                ports["auth"],
            ),
            "filtermail outgoing": (py + ["chatmaild.filtermail", str(ini), "outgoing"], ports["out"]),
            "filtermail incoming": (py + ["chatmaild.filtermail", str(ini), "incoming"], ports["in"]),
        }
        # (argv, socket, first request): a dict lookup, an HTTP request.
        activated: dict[str, tuple[list[str], int | Path, bytes]] = {
            "chatmail-metadata": (
                ["-m", "chatmaild.metadata", str(ini), "--socket", str(work / "metadata.sock")],
                work / "metadata.sock",
                b"H3\t2\t0\t\tmetadata\nLshared/vendor/deltachat/maxsmtprecipients\t\n",
            ),
            "chatmail-lastlogin": (
                ["-m", "chatmaild.lastlogin", str(ini), "--socket", str(work / "lastlogin.sock")],
                work / "lastlogin.sock",
                b"H3\t2\t0\t\tlastlogin\nLshared/last-login/nobody@bench.example.org\t\n",
            ),
            "chatmail-newemail": (
                ["-m", "chatmaild.newemail", str(ini), "--listen", f"127.0.0.1:{ports['new']}"],
                ports["new"],
                b"POST /new HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            ),
        }
        env = dict(os.environ, CREDENTIALS_DIRECTORY=str(work))
        procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            for name, (argv_, _) in always.items():
                procs[name] = subprocess.Popen(argv_, env=env, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + START_TIMEOUT_SECONDS
            for name, (_, target) in always.items():
                while not serving(target):
                    if procs[name].poll() is not None:
                        raise SystemExit(f"{name} exited with {procs[name].returncode}")
                    if time.monotonic() > deadline:
                        raise SystemExit(f"{name} did not start serving")
                    time.sleep(0.05)
            time.sleep(SETTLE_SECONDS)
            total = total_pss = 0
            print(f"{'daemon':<22}{'idle VmRSS':>12}{'PSS':>12}")
            for name, proc in procs.items():
                rss, pss = vm_rss_kib(proc.pid), pss_kib(proc.pid)
                total += rss
                total_pss += pss
                print(f"{name:<22}{rss / 1024:>8.1f} MiB{pss / 1024:>8.1f} MiB")
                report(f"memory.{name.replace(' ', '-')}.mib", rss / 1024)
            # One at a time, while the always-running daemons stay up: as on a relay.
            for name, (argv_, target, request) in activated.items():
                latency, running, idle = on_demand(name, argv_, target, request, env)
                total += idle
                print(f"{name:<22}{idle / 1024:>8.1f} MiB   (on demand: {running / 1024:.1f} MiB while "
                      f"it runs, first answer after {latency * 1000:.0f} ms, left when idle)")
                report(f"memory.{name}.mib", idle / 1024, "left when idle")
                report(f"memory.{name}.running_mib", running / 1024)
                report(f"memory.{name}.first_request_ms", latency * 1000)
            print(f"{'together':<22}{total / 1024:>8.1f} MiB{total_pss / 1024:>8.1f} MiB")
            report("memory.total_mb", total * 1024 / 1e6,
                   f"{len(procs)} processes running, {len(activated)} on demand")
            # RSS counts the pages of shared libraries (libpython, libcrypto) once per
            # process; PSS divides them among the sharers, so its sum is what they cost.
            report("memory.total_pss_mb", total_pss * 1024 / 1e6)
        finally:
            for proc in procs.values():
                proc.send_signal(signal.SIGTERM)  # all at once, then wait for each
            for proc in procs.values():
                stop(proc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
