#!/usr/bin/env python3
"""Benchmark the dict services: chatmail-metadata (tokens, pushes) and chatmail-lastlogin.

Dovecot reaches both services over unix sockets with its dict-proxy line
protocol: on every IMAP login ``last_login`` sets the login time, a client
registering for push sets ``/private/devicetoken``, and every delivery sets
``/private/messagenew``, which makes chatmail-metadata queue one HTTP POST
per device token to the notification proxy. This starts both daemons as
real processes (temporary chatmail.ini, a mailboxes directory holding
``--accounts`` accounts) with ``notification_url`` pointing at a fake proxy
in this process that answers 200 and records when each POST arrived, so the
pushes are really sent. It then drives the sockets the way Dovecot does:
``--connections`` connections, each sending one request and waiting for
its reply before the next.

Phases, each printed with operations per second and p50/p99 latency:

* token registration: ``B``/``S priv/<guid>/devicetoken``/``C`` (one token
  per account; later rounds refresh it, which rewrites metadata.json);
* token lookup: ``L priv/<guid>/devicetoken``;
* messagenew: ``B``/``S priv/<guid>/messagenew``/``C``; afterwards it waits
  for every push POST and reports how many arrived and the p50/p99 time
  from sending the transaction to the POST reaching the fake proxy;
* lastlogin: ``B``/``S shared/last-login/<addr>``/``C`` with the current time.

It also prints each daemon's resident memory (VmRSS) idle and after the load.
This is a measurement to read, not a test: it checks only that every
request got the expected reply and every push arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from benchlib import percentile, vm_rss_kib

DOMAIN = "bench.example.org"
START_TIMEOUT_SECONDS = 30.0
PUSH_WAIT_SECONDS = 30.0
DUMMY_HASH = "{SHA512-CRYPT}$6$benchsalt$notarealhash"


def describe(name: str, wall: float, latencies: list[float]) -> str:
    p50 = statistics.median(latencies) * 1000
    p99 = percentile(latencies, 0.99) * 1000
    return (
        f"{name:<20}{len(latencies):>8}{len(latencies) / wall:>10.0f}{p50:>10.2f}{p99:>10.2f}"
    )


# --- fake notification proxy ----------------------------------------------


class FakeProxy:
    """Minimal HTTP/1.1 server (keep-alive): answers 200 and records each POST's arrival."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[str, float]] = []
        self.arrived = asyncio.Event()
        self.expected = 0
        self.connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections[task] = writer
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                self.arrivals.append((body.decode(), time.perf_counter()))
                if len(self.arrivals) >= self.expected:
                    self.arrived.set()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.connections.pop(task, None)
            writer.close()

    async def close_connections(self) -> None:
        """End the open keep-alive connections; their handlers then see EOF and return."""
        tasks = list(self.connections)
        for writer in self.connections.values():
            writer.close()
        if tasks:
            await asyncio.wait(tasks, timeout=5)


# --- daemons ----------------------------------------------------------------


def write_config(workdir: Path, proxy_port: int) -> Path:
    ini = workdir / "chatmail.ini"
    ini.write_text(
        "[params]\n"
        f"mail_domain = {DOMAIN}\n"
        f"mailboxes_dir = {workdir / 'mail'}\n"
        f"nocreate_file = {workdir / 'nocreate'}\n"
        f"notification_url = http://127.0.0.1:{proxy_port}/notify\n"
    )
    return ini


def create_accounts(mailboxes_dir: Path, n: int) -> list[str]:
    addrs = [f"bench{i:06d}@{DOMAIN}" for i in range(n)]
    for addr in addrs:
        (mailboxes_dir / addr).mkdir(parents=True)
        (mailboxes_dir / addr / "password").write_text(DUMMY_HASH)
    return addrs


async def start_daemon(name: str, module: str, ini: Path, sock: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as errfile:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"from chatmaild.{module} import main; main()",
                "--socket",
                str(sock),
                str(ini),
            ],
            stderr=errfile,
        )
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"{name} exited with {proc.returncode}: " + " | ".join(tail))
        try:
            _, writer = await asyncio.open_unix_connection(str(sock))
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return proc
    proc.kill()
    raise RuntimeError(f"{name} did not listen within {START_TIMEOUT_SECONDS}s")


def stop_daemon(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- dict-proxy clients -------------------------------------------------------


class DictClient:
    """One connection as a Dovecot process keeps it: one request, then its reply."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.tid = 0

    @classmethod
    async def open(cls, sock: Path, service: str) -> DictClient:
        reader, writer = await asyncio.open_unix_connection(str(sock))
        writer.write(f"H3\t2\t0\t\t{service}\n".encode())
        return cls(reader, writer)

    async def request(self, data: str) -> bytes:
        self.writer.write(data.encode())
        await self.writer.drain()
        return await self.reader.readline()

    async def set(self, user: str, key: str, value: str) -> bytes:
        self.tid += 1
        t = self.tid
        return await self.request(f"B{t}\t{user}\nS{t}\t{key}\t{value}\nC{t}\n")

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def run_phase(
    sock: Path, service: str, count: int, connections: int, op: Callable[[DictClient, int], Awaitable[None]]
) -> tuple[float, list[float]]:
    """Run ``op(client, i)`` for i in range(count) over ``connections`` connections."""
    clients = [await DictClient.open(sock, service) for _ in range(connections)]
    latencies: list[float] = []
    todo = iter(range(count))

    async def worker(client: DictClient) -> None:
        for i in todo:
            started = time.perf_counter()
            await op(client, i)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in clients))
    wall = time.perf_counter() - started
    for client in clients:
        await client.close()
    return wall, latencies


def expect(reply: bytes, wanted: bytes, what: str) -> None:
    if reply != wanted:
        raise RuntimeError(f"{what}: expected {wanted!r}, got {reply!r}")


# --- the benchmark ----------------------------------------------------------------


async def run(args: argparse.Namespace, workdir: Path, sockdir: Path) -> None:
    proxy = FakeProxy()
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    proxy_port = server.sockets[0].getsockname()[1]
    ini = write_config(workdir, proxy_port)
    addrs = create_accounts(workdir / "mail", args.accounts)
    # Random, opaque tokens as clients send them (encrypted to the proxy's key).
    tokens = [secrets.token_urlsafe(48) for _ in addrs]
    owner = {tok: i for i, tok in enumerate(tokens)}
    meta_sock, login_sock = sockdir / "metadata.socket", sockdir / "lastlogin.socket"
    meta = login = None
    try:
        meta = await start_daemon("chatmail-metadata", "metadata", ini, meta_sock, workdir / "metadata.log")
        login = await start_daemon(
            "chatmail-lastlogin", "lastlogin", ini, login_sock, workdir / "lastlogin.log"
        )
        await asyncio.sleep(0.3)
        idle = {"chatmail-metadata": vm_rss_kib(meta.pid), "chatmail-lastlogin": vm_rss_kib(login.pid)}
        n = len(addrs)
        print(
            f"{n} accounts, 1 device token each, {args.connections} dict connections per phase, "
            "fake push proxy on loopback"
        )
        print(f"{'operation':<20}{'ops':>8}{'ops/s':>10}{'p50 ms':>10}{'p99 ms':>10}")

        async def register(c: DictClient, i: int) -> None:
            reply = await c.set(addrs[i % n], f"priv/guid{i % n:06d}/devicetoken", tokens[i % n])
            expect(reply, b"O\n", "token registration")

        wall, lat = await run_phase(meta_sock, "metadata", args.registrations, args.connections, register)
        print(describe("token registration", wall, lat), flush=True)

        async def lookup(c: DictClient, i: int) -> None:
            reply = await c.request(f"Lpriv/guid{i % n:06d}/devicetoken\t{addrs[i % n]}\n")
            expect(reply, f"O{tokens[i % n]}\n".encode(), "token lookup")

        wall, lat = await run_phase(meta_sock, "metadata", args.lookups, args.connections, lookup)
        print(describe("token lookup", wall, lat), flush=True)

        sent: dict[int, collections.deque[float]] = collections.defaultdict(collections.deque)
        proxy.expected = args.messagenew

        async def messagenew(c: DictClient, i: int) -> None:
            sent[i % n].append(time.perf_counter())
            reply = await c.set(addrs[i % n], f"priv/guid{i % n:06d}/messagenew", "")
            expect(reply, b"O\n", "messagenew")

        wall, lat = await run_phase(meta_sock, "metadata", args.messagenew, args.connections, messagenew)
        print(describe("messagenew", wall, lat), flush=True)
        try:
            await asyncio.wait_for(proxy.arrived.wait(), PUSH_WAIT_SECONDS)
        except TimeoutError:
            pass
        await asyncio.sleep(0.2)  # would catch duplicates
        delays = [arrived - sent[owner[tok]].popleft() for tok, arrived in proxy.arrivals if tok in owner]
        if delays:
            print(
                f"{'push POSTs arrived':<20}{len(proxy.arrivals):>8} of {args.messagenew}, commit->POST "
                f"p50 {statistics.median(delays) * 1000:.2f} ms, p99 {percentile(delays, 0.99) * 1000:.2f} ms"
            )
        else:
            print(f"{'push POSTs arrived':<20}{len(proxy.arrivals):>8} of {args.messagenew}")

        now = int(time.time())

        async def lastlogin(c: DictClient, i: int) -> None:
            addr = addrs[i % n]
            expect(await c.set(addr, f"shared/last-login/{addr}", str(now)), b"O\n", "lastlogin")

        wall, lat = await run_phase(login_sock, "lastlogin", args.lastlogins, args.connections, lastlogin)
        print(describe("lastlogin", wall, lat), flush=True)

        loaded = {"chatmail-metadata": vm_rss_kib(meta.pid), "chatmail-lastlogin": vm_rss_kib(login.pid)}
        for name in idle:
            print(f"{name} VmRSS: idle {idle[name] / 1024:.1f} MiB, after load {loaded[name] / 1024:.1f} MiB")
        if len(proxy.arrivals) != args.messagenew:
            raise SystemExit(f"{len(proxy.arrivals)} push POSTs arrived, expected {args.messagenew}")
    finally:
        for proc in (meta, login):
            if proc is not None:
                stop_daemon(proc)
        server.close()
        await proxy.close_connections()
        await server.wait_closed()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Start real chatmail-metadata and chatmail-lastlogin daemons and measure "
        "token registrations, lookups, messagenew (with the pushes they send) and lastlogin "
        "sets per second, p50/p99 latency and the daemons' resident memory.",
    )
    parser.add_argument("--quick", action="store_true", help="a small run (seconds) to check that it works")
    parser.add_argument(
        "--accounts", type=int, help="accounts in the mailboxes dir (default 5000, quick 100)"
    )
    parser.add_argument("--registrations", type=int, help="token registrations (default 10000, quick 300)")
    parser.add_argument("--lookups", type=int, help="token lookups (default 50000, quick 1000)")
    parser.add_argument(
        "--messagenew", type=int, help="messagenew sets, one push each (default 10000, quick 300)"
    )
    parser.add_argument("--lastlogins", type=int, help="lastlogin sets (default 50000, quick 1000)")
    parser.add_argument("--connections", type=int, default=8, help="parallel dict connections (default 8)")
    args = parser.parse_args(argv)
    defaults = {
        "accounts": (100, 5000),
        "registrations": (300, 10000),
        "lookups": (1000, 50000),
        "messagenew": (300, 10000),
        "lastlogins": (1000, 50000),
    }
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.connections < 1:
        parser.error("--connections must be at least 1")

    workdir = Path(tempfile.mkdtemp(prefix="bench-metadata-"))
    # Unix socket paths must stay short (about 100 bytes), whatever TMPDIR is.
    sockdir = Path(tempfile.mkdtemp(prefix="bm-", dir="/tmp"))
    try:
        asyncio.run(run(args, workdir, sockdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(sockdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
