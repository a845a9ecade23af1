"""Measure filtermail's outgoing throughput and per-message overhead on this machine.

Starts a real ``filtermail outgoing`` in a subprocess with a temporary
config, behind it a fake Postfix reinjection listener (aiosmtpd) in this
process, and sends ``--count`` PGP/MIME messages of about 10 KB through it
with ``--concurrency`` parallel SMTP clients. The same messages are also
sent straight to the fake Postfix, so the table can show what filtermail
adds on top of one SMTP hop. Also prints filtermail's resident memory
(VmRSS) idle and after the load.

Needs pgpy (a test dependency) to make the encrypted message once.

    python bench/bench_filtermail.py --count 500 --concurrency 4
    python bench/bench_filtermail.py --quick   # 50 messages, a few seconds
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path

import aiosmtplib
from aiosmtpd.smtp import SMTP
from benchlib import vm_rss_kib

DOMAIN = "bench.example.org"
SENDER = f"sender@{DOMAIN}"
RECIPIENT = f"recipient@{DOMAIN}"


def make_message(size: int) -> bytes:
    """One real PGP/MIME message whose encrypted payload holds ``size`` bytes of text.

    ``size`` defaults to 9,000 so that the whole message, after base64 armor, is about 10 KB.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgpy
        from pgpy.constants import EllipticCurveOID, KeyFlags, PubKeyAlgorithm, SymmetricKeyAlgorithm

        key = pgpy.PGPKey.new(PubKeyAlgorithm.EdDSA, EllipticCurveOID.Ed25519)
        key.add_uid(pgpy.PGPUID.new(RECIPIENT), usage={KeyFlags.Sign})
        subkey = pgpy.PGPKey.new(PubKeyAlgorithm.ECDH, EllipticCurveOID.Curve25519)
        key.add_subkey(subkey, usage={KeyFlags.EncryptCommunications})
        # Random text, so that compression inside OpenPGP cannot shrink it.
        text = base64.b64encode(os.urandom(size)).decode()[:size]
        encrypted = key.pubkey.encrypt(pgpy.PGPMessage.new(text), cipher=SymmetricKeyAlgorithm.AES128)
    lines = textwrap.wrap(base64.b64encode(bytes(encrypted)).decode(), 64)
    armored = "\r\n".join(["-----BEGIN PGP MESSAGE-----", "", *lines, "-----END PGP MESSAGE-----"])
    return (
        f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: ...\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="b"\r\n'
        "\r\n--b\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n"
        '\r\n--b\r\nContent-Type: application/octet-stream; name="encrypted.asc"\r\n\r\n'
        f"{armored}\r\n\r\n--b--\r\n"
    ).encode()


class CountingPostfix:
    """Fake reinjection listener: accepts everything and counts it."""

    def __init__(self) -> None:
        self.received = 0

    async def handle_DATA(self, server, session, envelope) -> str:
        self.received += 1
        return "250 OK"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        if process.poll() is not None:
            raise SystemExit(f"filtermail exited with {process.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise SystemExit("filtermail did not start listening")


async def send_all(port: int, data: bytes, count: int, concurrency: int) -> tuple[float, list[float]]:
    """Send ``count`` messages over ``concurrency`` connections; (seconds, per-message latencies)."""
    latencies: list[float] = []
    todo = iter(range(count))

    async def worker() -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, use_tls=False)
        await smtp.connect()
        for _ in todo:
            start = time.perf_counter()
            await smtp.sendmail(SENDER, [RECIPIENT], data)
            latencies.append(time.perf_counter() - start)
        await smtp.quit()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start, latencies


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


async def run(args: argparse.Namespace) -> None:
    data = make_message(args.size)
    loop = asyncio.get_running_loop()
    postfix = CountingPostfix()
    postfix_server = await loop.create_server(lambda: SMTP(postfix), "127.0.0.1", 0)
    postfix_port = postfix_server.sockets[0].getsockname()[1]
    filter_port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp, "chatmail.ini")
        config.write_text(
            "[params]\n"
            f"mail_domain = {DOMAIN}\n"
            f"mailboxes_dir = {tmp}/mail\n"
            f"nocreate_file = {tmp}/nocreate\n"
            f"filtermail_smtp_port = {filter_port}\n"
            f"postfix_reinject_port = {postfix_port}\n"
            # The benchmark is one sender: keep the rate limit out of the way.
            "max_user_send_per_minute = 100000000\n"
            "max_user_send_burst_size = 100000000\n"
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "chatmaild.filtermail", str(config), "outgoing"],
            stderr=subprocess.DEVNULL,
        )
        try:
            await wait_for_port(filter_port, process)
            rss_idle = vm_rss_kib(process.pid)
            warmup = 10 if args.quick else 50
            await send_all(filter_port, data, min(warmup, args.count), args.concurrency)  # warm-up
            direct_time, direct = await send_all(postfix_port, data, args.count, args.concurrency)
            filter_time, filtered = await send_all(filter_port, data, args.count, args.concurrency)
            rss_loaded = vm_rss_kib(process.pid)
        finally:
            process.terminate()
            process.wait()
    postfix_server.close()

    print(f"filtermail outgoing, {args.count} messages of {len(data)} bytes, concurrency {args.concurrency}")
    print(f"{'path':<28}{'msg/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for name, seconds, lat in (
        ("direct to fake Postfix", direct_time, direct),
        ("through filtermail", filter_time, filtered),
    ):
        print(
            f"{name:<28}{args.count / seconds:>10.0f}{quantile(lat, 0.5) * 1e3:>10.2f}{quantile(lat, 0.99) * 1e3:>10.2f}"
        )
    overhead50 = (quantile(filtered, 0.5) - quantile(direct, 0.5)) * 1e3
    overhead99 = (quantile(filtered, 0.99) - quantile(direct, 0.99)) * 1e3
    print(f"{'filtermail overhead':<28}{'':>10}{overhead50:>10.2f}{overhead99:>10.2f}")
    print(f"filtermail VmRSS: idle {rss_idle / 1024:.1f} MiB, after load {rss_loaded / 1024:.1f} MiB")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run (seconds) to check that it works")
    parser.add_argument("--count", type=int, help="messages per measured run (default 500, quick 50)")
    parser.add_argument("--concurrency", type=int, default=1, help="parallel SMTP connections (default 1)")
    parser.add_argument(
        "--size",
        type=int,
        default=9_000,
        help="plaintext bytes per message (default 9000: about 10 KB armored)",
    )
    args = parser.parse_args(argv)
    if args.count is None:
        args.count = 50 if args.quick else 500
    if args.count < 2 or args.concurrency < 1:
        parser.error("--count must be at least 2 and --concurrency at least 1")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
