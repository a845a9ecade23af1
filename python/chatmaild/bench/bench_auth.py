#!/usr/bin/env python3
"""Benchmark doveauth: account creations and logins per second, latency, memory.

Every IMAP/SMTP login on a relay is one passdb request to doveauth, so its
throughput bounds how fast a relay can take logins after a restart, when all
clients reconnect at once. This starts a real doveauth process (temporary
chatmail.ini and mailboxes directory, a free loopback port), then drives it
the way Dovecot's Lua passdb does: several keep-alive HTTP/1.1 connections,
each carrying the token header, sending one request after the other.

Two phases: first logins of new addresses (each creates an account, which
hashes the password with SHA-512 crypt, 5000 rounds), then logins of the
accounts just created (a file read). For each it prints requests per second
and p50/p99 latency, and it prints the daemon's resident memory (VmRSS) when
idle and after the load.

This is a measurement to read, not a test: it checks only that every
request was answered 200.
"""

from __future__ import annotations

import argparse
import secrets
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchlib import cpu_seconds, percentile, report, stop, vm_rss_kib

DOMAIN = "bench.example.org"
START_TIMEOUT_SECONDS = 30.0


def start_doveauth(workdir: Path) -> tuple[subprocess.Popen[bytes], int, str]:
    """Start doveauth on a free port; return the process, the port and the token."""
    ini = workdir / "chatmail.ini"
    ini.write_text(
        "[params]\n"
        f"mail_domain = {DOMAIN}\n"
        f"mailboxes_dir = {workdir / 'mail'}\n"
        f"nocreate_file = {workdir / 'nocreate'}\n"
        # The benchmark should measure doveauth, not be stopped by the resource gate.
        "max_load_1m = 1000\n"
        "min_available_memory = 1M\n"
        "min_free_disk_space = 1M\n"
    )
    token_file = workdir / "token"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chatmaild.doveauth",
            str(ini),
            "--listen",
            "127.0.0.1:0",
            "--token-file",
            str(token_file),
        ],
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        line = proc.stderr.readline().decode(errors="replace")
        if not line:
            raise RuntimeError(f"doveauth exited with {proc.wait()} before listening")
        if "listening on" in line:
            port = int(line.rsplit(":", 1)[1])
            # Keep draining stderr so a chatty daemon never blocks on a full pipe.
            _drain_in_background(proc)
            return proc, port, token_file.read_text()
    proc.kill()
    raise RuntimeError(f"doveauth did not listen within {START_TIMEOUT_SECONDS}s")


def _drain_in_background(proc: subprocess.Popen[bytes]) -> None:
    def drain() -> None:
        assert proc.stderr is not None
        for _ in proc.stderr:
            pass

    threading.Thread(target=drain, daemon=True).start()


class Connection:
    """One keep-alive HTTP/1.1 connection, like one Dovecot auth worker's (a blocking socket).

    The load generator is plain blocking sockets, one thread per connection:
    cheaper per request than the server it measures, so doveauth is the
    bottleneck (the bench prints the generator's own ceiling too).
    """

    def __init__(self, sock: socket.socket, token: str) -> None:
        self.sock = sock
        self.token = token
        self.buffer = b""

    @classmethod
    def open(cls, port: int, token: str) -> Connection:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock, token)

    def post(self, path: str, body: bytes) -> int:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: localhost\r\nX-Chatmail-Token: {self.token}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self.sock.sendall(head.encode("ascii") + body)
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        response, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status = int(response.split(b" ", 2)[1])
        length = 0
        for line in response.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        while len(self.buffer) < length:
            self._fill()
        self.buffer = self.buffer[length:]
        return status

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise RuntimeError("doveauth closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


def run_phase(port: int, token: str, bodies: list[bytes], connections: int) -> tuple[float, list[float]]:
    """Send ``bodies`` to /passdb over ``connections`` connections; return wall time and latencies."""
    conns = [Connection.open(port, token) for _ in range(connections)]
    latencies: list[float] = []
    errors: list[str] = []
    queue = list(reversed(bodies))
    lock = threading.Lock()

    def worker(conn: Connection) -> None:
        while not errors:
            with lock:
                if not queue:
                    return
                body = queue.pop()
            started = time.perf_counter()
            status = conn.post("/passdb", body)
            latencies.append(time.perf_counter() - started)
            if status != 200:
                user = body.partition(b"\n")[0].decode()
                errors.append(f"passdb answered {status} for {user}")

    threads = [threading.Thread(target=worker, args=(c,)) for c in conns]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    for conn in conns:
        conn.close()
    if errors:
        raise RuntimeError(errors[0])
    return wall, latencies


def describe(name: str, wall: float, latencies: list[float]) -> str:
    p50 = statistics.median(latencies) * 1000
    p99 = percentile(latencies, 0.99) * 1000
    return (
        f"{name:<20} {len(latencies):>6} requests in {wall:6.2f}s = {len(latencies) / wall:8.1f}/s, "
        f"p50 {p50:6.2f} ms, p99 {p99:6.2f} ms"
    )


def random_credentials(n: int) -> list[tuple[str, str]]:
    alphabet = string.ascii_lowercase + string.digits
    return [
        ("".join(secrets.choice(alphabet) for _ in range(9)) + "@" + DOMAIN, secrets.token_urlsafe(12))
        for _ in range(n)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Start a real doveauth and measure account creations and logins per second, "
        "p50/p99 latency and the daemon's resident memory.",
    )
    parser.add_argument("--quick", action="store_true", help="a small run (seconds) to check that it works")
    parser.add_argument("--accounts", type=int, help="accounts to create (default 1000, quick 200)")
    parser.add_argument("--logins", type=int, help="logins of existing accounts (default 20000, quick 5000)")
    parser.add_argument(
        "--connections",
        type=int,
        default=8,
        help="parallel keep-alive connections for account creation (default 8)",
    )
    parser.add_argument(
        "--login-connections",
        type=int,
        default=1,
        help="keep-alive connections for logins of existing accounts (default 1)",
    )
    args = parser.parse_args(argv)
    accounts = args.accounts or (200 if args.quick else 1000)
    logins = args.logins or (5000 if args.quick else 20000)
    if accounts < 1 or logins < 1 or args.connections < 1 or args.login_connections < 1:
        parser.error("--accounts, --logins and the connection counts must be at least 1")

    with tempfile.TemporaryDirectory(prefix="bench-auth-") as tmp:
        proc, port, token = start_doveauth(Path(tmp))
        try:
            time.sleep(0.2)
            idle_rss = vm_rss_kib(proc.pid)
            creds = random_credentials(accounts)
            bodies = [f"{addr}\n{pw}".encode() for addr, pw in creds]
            login_bodies = [bodies[i % accounts] for i in range(logins)]
            print(f"doveauth pid {proc.pid} on 127.0.0.1:{port}")
            cpu = cpu_seconds(proc.pid)
            wall, lat = run_phase(port, token, bodies, args.connections)
            cpu = (cpu_seconds(proc.pid) - cpu) * 1000 / len(lat)
            print(describe(f"creation, {args.connections} conn", wall, lat) + f", doveauth CPU {cpu:.2f} ms each")
            report("auth.create.cpu_ms", cpu)
            report("auth.create.rate", len(lat) / wall, f"{args.connections} connections")
            report("auth.create.p99_ms", percentile(lat, 0.99) * 1000, f"{args.connections} connections")
            cpu = cpu_seconds(proc.pid)
            wall, lat = run_phase(port, token, login_bodies, args.login_connections)
            cpu = (cpu_seconds(proc.pid) - cpu) * 1000 / len(lat)
            print(describe(f"login, {args.login_connections} conn", wall, lat) + f", doveauth CPU {cpu:.3f} ms each")
            report("auth.login.cpu_ms", cpu)
            report(f"auth.login.c{args.login_connections}.rate", len(lat) / wall)
            loaded_rss = vm_rss_kib(proc.pid)
            print(f"doveauth VmRSS: idle {idle_rss / 1024:.1f} MiB, after load {loaded_rss / 1024:.1f} MiB")
        finally:
            stop(proc, signal.SIGINT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
