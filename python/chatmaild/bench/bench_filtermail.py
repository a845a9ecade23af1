#!/usr/bin/env python3
"""Measure filtermail's throughput, outgoing and incoming (with DKIM verification on).

Three kinds of processes, so that the filter is the bottleneck being
measured and not the Python that drives it:

* the filter: a real ``filtermail outgoing`` or ``filtermail incoming``
  with a temporary chatmail.ini;
* the sink: a minimal SMTP listener in a process of its own standing in for
  Postfix's reinjection port; it counts every message it receives, and the
  count must equal the messages the filter accepted;
* the load generator: ``--concurrency`` SMTP clients on blocking sockets,
  spread over up to GENERATOR_PROCESSES processes, each sending one message
  after the other on its connection.

Before each measurement the generator sends the same number of messages
straight to the sink: that rate is the generator's (and sink's) own
ceiling, printed beside the filter's figure. A filter figure close to it
means the machine, not the filter, is the limit.

Messages are real PGP/MIME (an OpenPGP message made by pgpy, about 11.5 KB
armored). For incoming mail the message also carries a real DKIM signature
(RSA 2048, made with dkimpy) of the ``From:`` domain, and the filter looks
the key up in DNS: the benchmark runs a stand-in DNS server on loopback
that answers the key's TXT record, and starts the filter with dnspython's
default resolver pointed at it (nothing else of the filter is changed).

    python bench/bench_filtermail.py                 # 1 and 8 clients, both directions
    python bench/bench_filtermail.py --quick         # fewer messages
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import multiprocessing
import multiprocessing.sharedctypes
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings
from pathlib import Path

from benchlib import cpu_seconds, percentile, report, vm_rss_kib

DOMAIN = "bench.example.org"
SENDER_DOMAIN = "sender.example"
SELECTOR = "bench"
GENERATOR_PROCESSES = 4
START_TIMEOUT_SECONDS = 30.0


# --- messages ---------------------------------------------------------------


def make_message(size: int, sender: str, recipient: str) -> bytes:
    """One real PGP/MIME message whose encrypted payload holds ``size`` bytes of random text."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgpy
        from pgpy.constants import EllipticCurveOID, KeyFlags, PubKeyAlgorithm, SymmetricKeyAlgorithm

        key = pgpy.PGPKey.new(PubKeyAlgorithm.EdDSA, EllipticCurveOID.Ed25519)
        key.add_uid(pgpy.PGPUID.new(recipient), usage={KeyFlags.Sign})
        subkey = pgpy.PGPKey.new(PubKeyAlgorithm.ECDH, EllipticCurveOID.Curve25519)
        key.add_subkey(subkey, usage={KeyFlags.EncryptCommunications})
        text = base64.b64encode(os.urandom(size)).decode()[:size]
        encrypted = key.pubkey.encrypt(pgpy.PGPMessage.new(text), cipher=SymmetricKeyAlgorithm.AES128)
    lines = textwrap.wrap(base64.b64encode(bytes(encrypted)).decode(), 64)
    armored = "\r\n".join(["-----BEGIN PGP MESSAGE-----", "", *lines, "-----END PGP MESSAGE-----"])
    return (
        f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: [...]\r\nMIME-Version: 1.0\r\n"
        f"Date: Mon, 30 Nov 2026 12:00:00 +0000\r\nMessage-ID: <bench@{sender.partition('@')[2]}>\r\n"
        'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="b"\r\n'
        "\r\n--b\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n"
        '\r\n--b\r\nContent-Type: application/octet-stream; name="encrypted.asc"\r\n\r\n'
        f"{armored}\r\n\r\n--b--\r\n"
    ).encode()


def dkim_key_pair() -> tuple[bytes, bytes]:
    """A fresh RSA 2048 key: (PEM private key, the DKIM TXT record publishing it)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def dkim_sign(message: bytes, private_key: bytes) -> bytes:
    import dkim

    signature = dkim.sign(
        message,
        SELECTOR.encode(),
        SENDER_DOMAIN.encode(),
        private_key,
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type"],
    )
    return signature + message


# --- the stand-in DNS server ---------------------------------------------------


def serve_dns(sock: socket.socket, records: dict[str, bytes], stop: threading.Event) -> None:
    """Answer TXT queries for ``records`` (name with trailing dot), NXDOMAIN for the rest."""
    import dns.message
    import dns.rcode
    import dns.rdataclass
    import dns.rdatatype
    import dns.rrset

    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            data, peer = sock.recvfrom(4096)
        except TimeoutError:
            continue
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        record = records.get(question.name.to_text().lower())
        if record is not None and question.rdtype == dns.rdatatype.TXT:
            chunks = " ".join(f'"{record[i : i + 255].decode()}"' for i in range(0, len(record), 255))
            response.answer.append(
                dns.rrset.from_text(question.name, 300, dns.rdataclass.IN, dns.rdatatype.TXT, chunks)
            )
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        sock.sendto(response.to_wire(), peer)


# --- the sink -------------------------------------------------------------------


class SinkProtocol(asyncio.Protocol):
    """Just enough SMTP to take messages (EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT); counts them."""

    def __init__(self, counter: multiprocessing.sharedctypes.Synchronized) -> None:  # type: ignore[type-arg]
        self.counter = counter
        self.buffer = b""
        self.in_data = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(b"220 sink ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n")
                if end < 0:
                    return
                self.buffer = self.buffer[end + 5 :]
                self.in_data = False
                with self.counter.get_lock():
                    self.counter.value += 1
                self.transport.write(b"250 2.0.0 queued\r\n")
                continue
            line, sep, rest = self.buffer.partition(b"\r\n")
            if not sep:
                return
            self.buffer = rest
            verb = line[:4].upper()
            if verb == b"EHLO":
                self.transport.write(b"250-sink\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 PIPELINING\r\n")
            elif verb == b"DATA":
                self.in_data = True
                self.transport.write(b"354 go ahead\r\n")
            elif verb == b"QUIT":
                self.transport.write(b"221 bye\r\n")
                self.transport.close()
                return
            else:
                self.transport.write(b"250 ok\r\n")


def run_sink(port: int, counter: multiprocessing.sharedctypes.Synchronized, ready: threading.Event) -> None:  # type: ignore[type-arg]
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: SinkProtocol(counter), "127.0.0.1", port)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# --- the load generator -------------------------------------------------------


def send_on_one_connection(port: int, data: bytes, count: int, latencies: list[float], sender: str) -> None:
    """Send ``count`` messages on one blocking SMTP connection; every reply must be 2xx/3xx."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = sock.makefile("rb")

    def reply() -> bytes:
        while True:
            line = reader.readline()
            if not line:
                raise RuntimeError("the server closed the connection")
            if line[3:4] != b"-":
                if line[:1] not in (b"2", b"3"):
                    raise RuntimeError(f"refused: {line.decode(errors='replace').strip()}")
                return line

    body = data.replace(b"\r\n.", b"\r\n..") + b".\r\n"
    reply()
    sock.sendall(b"EHLO generator\r\n")
    reply()
    for _ in range(count):
        started = time.perf_counter()
        sock.sendall(f"MAIL FROM:<{sender}>\r\n".encode())
        reply()
        sock.sendall(f"RCPT TO:<recipient@{DOMAIN}>\r\n".encode())
        reply()
        sock.sendall(b"DATA\r\n")
        reply()
        sock.sendall(body)
        reply()
        latencies.append(time.perf_counter() - started)
    sock.sendall(b"QUIT\r\n")
    sock.close()


def generator_process(port: int, data: bytes, counts: list[int], sender: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    latencies: list[float] = []

    def client(n: int) -> None:
        try:
            send_on_one_connection(port, data, n, latencies, sender)
        except (RuntimeError, OSError) as exc:
            print(f"  load generator: {exc}", file=sys.stderr)

    threads = [threading.Thread(target=client, args=(n,)) for n in counts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.put(latencies)


def generate(port: int, data: bytes, count: int, concurrency: int, sender: str) -> tuple[float, list[float]]:
    """Send ``count`` messages over ``concurrency`` connections from separate processes."""
    per_connection = [count // concurrency + (1 if i < count % concurrency else 0) for i in range(concurrency)]
    processes = min(concurrency, GENERATOR_PROCESSES)
    shares = [per_connection[i::processes] for i in range(processes)]
    out: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    procs = [
        multiprocessing.Process(target=generator_process, args=(port, data, share, sender, out)) for share in shares
    ]
    started = time.perf_counter()
    for proc in procs:
        proc.start()
    latencies: list[float] = []
    for _ in procs:
        latencies.extend(out.get(timeout=600))
    wall = time.perf_counter() - started
    for proc in procs:
        proc.join()
        if proc.exitcode:
            raise SystemExit(f"a load generator process failed (exit {proc.exitcode})")
    if len(latencies) != count:
        raise SystemExit(f"only {len(latencies)} of {count} messages were accepted")
    return wall, latencies


# --- the filter -----------------------------------------------------------------

LAUNCHER = """
import sys
import dns.asyncresolver
resolver = dns.asyncresolver.Resolver(configure=False)
resolver.nameservers = ["127.0.0.1"]
resolver.port = int(sys.argv[1])
dns.asyncresolver.default_resolver = resolver
from chatmaild.filtermail import main
raise SystemExit(main(sys.argv[2:]))
"""
"""Starts filtermail with dnspython's default resolver pointed at the stand-in DNS server."""


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"filtermail exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("filtermail did not start listening")


def measure_mode(mode: str, args: argparse.Namespace, sink_port: int, counter, dns_port: int, data: bytes) -> None:  # type: ignore[no-untyped-def]
    sender = f"sender@{DOMAIN}" if mode == "outgoing" else f"sender@{SENDER_DOMAIN}"
    filter_port, http_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="bench-filtermail-") as tmp:
        config = Path(tmp, "chatmail.ini")
        config.write_text(
            "[params]\n"
            f"mail_domain = {DOMAIN}\n"
            f"mailboxes_dir = {tmp}/mail\n"
            f"nocreate_file = {tmp}/nocreate\n"
            f"filtermail_smtp_port = {filter_port}\n"
            f"filtermail_smtp_port_incoming = {filter_port}\n"
            f"filtermail_http_port_incoming = {http_port}\n"
            f"postfix_reinject_port = {sink_port}\n"
            f"postfix_reinject_port_incoming = {sink_port}\n"
            # One sender in the benchmark: keep the rate limit out of the way.
            "max_user_send_per_minute = 100000000\n"
            "max_user_send_burst_size = 100000000\n"
        )
        env = {k: v for k, v in os.environ.items() if k != "CHATMAIL_SKIP_DKIM"}
        process = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, str(dns_port), str(config), mode], env=env, stderr=subprocess.DEVNULL
        )
        try:
            wait_for_port(filter_port, process)
            rss_idle = vm_rss_kib(process.pid)
            generate(filter_port, data, 20, 1, sender)  # warm-up, and the DKIM key gets cached
            if mode == "incoming":
                # DKIM is really checked: the same message with one header changed is refused.
                forged = data.replace(b"Subject: [...]", b"Subject: [!!!]", 1)
                try:
                    generate(filter_port, forged, 1, 1, sender)
                except SystemExit:
                    print("incoming: a message with a broken DKIM signature was refused, as it must be")
                else:
                    raise SystemExit("incoming: a message with a broken DKIM signature was accepted")
            for concurrency in args.concurrency:
                before = counter.value
                ceiling_wall, _ = generate(sink_port, data, args.count, concurrency, sender)
                direct = counter.value - before
                before, cpu_before = counter.value, cpu_seconds(process.pid)
                wall, latencies = generate(filter_port, data, args.count, concurrency, sender)
                arrived = counter.value - before
                cpu_ms = (cpu_seconds(process.pid) - cpu_before) * 1000 / args.count
                if arrived != args.count or direct != args.count:
                    raise SystemExit(f"the sink counted {arrived} of {args.count} accepted messages")
                rate, ceiling = args.count / wall, args.count / ceiling_wall
                print(
                    f"{mode:<9}{concurrency:>3} clients {rate:8.0f} msg/s  p50 {percentile(latencies, 0.5) * 1e3:6.2f} ms"
                    f"  p99 {percentile(latencies, 0.99) * 1e3:6.2f} ms   generator's ceiling {ceiling:6.0f} msg/s"
                    f"   ({arrived} counted at the sink; filter CPU {cpu_ms:.2f} ms/msg)",
                    flush=True,
                )
                report(f"filtermail.{mode}.c{concurrency}", rate, f"generator ceiling {ceiling:.0f}/s")
                report(f"filtermail.{mode}.c{concurrency}.ceiling", ceiling)
                report(f"filtermail.{mode}.c{concurrency}.cpu_ms", cpu_ms)
            print(f"filtermail {mode} VmRSS: idle {rss_idle / 1024:.1f} MiB, loaded {vm_rss_kib(process.pid) / 1024:.1f} MiB")
        finally:
            process.terminate()
            process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages per measurement (300)")
    parser.add_argument("--count", type=int, help="messages per measurement (default 2000, quick 300)")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 8], help="client counts to measure (default 1 8)"
    )
    parser.add_argument("--mode", choices=["outgoing", "incoming", "both"], default="both")
    parser.add_argument(
        "--size", type=int, default=9900, help="plaintext bytes (default 9900: about 11.5 KB armored)"
    )
    args = parser.parse_args(argv)
    args.count = args.count or (300 if args.quick else 2000)
    if args.count < max(args.concurrency) or min(args.concurrency) < 1:
        parser.error("--count must be at least the largest --concurrency, which must be at least 1")

    counter = multiprocessing.Value("q", 0)
    sink_port = free_port()
    ready = multiprocessing.Event()
    sink = multiprocessing.Process(target=run_sink, args=(sink_port, counter, ready), daemon=True)
    sink.start()
    dns_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dns_sock.bind(("127.0.0.1", 0))
    private, record = dkim_key_pair()
    stop = threading.Event()
    dns_thread = threading.Thread(
        target=serve_dns, args=(dns_sock, {f"{SELECTOR}._domainkey.{SENDER_DOMAIN}.": record}, stop), daemon=True
    )
    dns_thread.start()
    try:
        if not ready.wait(START_TIMEOUT_SECONDS):
            raise SystemExit("the sink did not start")
        modes = ["outgoing", "incoming"] if args.mode == "both" else [args.mode]
        for mode in modes:
            sender = f"sender@{DOMAIN}" if mode == "outgoing" else f"sender@{SENDER_DOMAIN}"
            data = make_message(args.size, sender, f"recipient@{DOMAIN}")
            if mode == "incoming":
                data = dkim_sign(data, private)
            print(f"{mode}: {len(data)} bytes per message, {args.count} messages per measurement", flush=True)
            measure_mode(mode, args, sink_port, counter, dns_sock.getsockname()[1], data)
    finally:
        stop.set()
        sink.terminate()
        sink.join()
        dns_sock.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
