#!/usr/bin/env python3
"""Hostile peers on a relay's port 25, all at once, for a while: many idle connections,
a few that drip a command one byte per second, and one that sends a message larger than
the relay's limit. Prints one JSON object: what each kind saw.

  hostilepeer.py --host RELAY --cafile CA [--idle 200] [--drip 5] [--hold 40] [--oversize BYTES]
"""

from __future__ import annotations

import argparse
import json
import smtplib
import socket
import ssl
import threading
import time


def idle(host: str, n: int, hold: float, out: dict) -> None:
    """Open n connections and say nothing; count those the relay accepted and later closed."""
    socks = []
    for _ in range(n):
        try:
            socks.append(socket.create_connection((host, 25), timeout=5))
        except OSError:
            out["idle_refused"] += 1
    out["idle_opened"] = len(socks)
    deadline = time.monotonic() + hold
    for sock in socks:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            while sock.recv(4096):
                pass
            out["idle_closed_by_relay"] += 1
        except OSError:
            pass
    for sock in socks:
        sock.close()


def drip(host: str, hold: float, out: dict) -> None:
    """Send "EHLO ..." one byte per second, for as long as the relay listens."""
    try:
        sock = socket.create_connection((host, 25), timeout=hold + 30)
    except OSError:
        out["drip_refused"] += 1
        return
    deadline = time.monotonic() + hold
    line = b"EHLO " + b"x" * 200
    try:
        for byte in line:
            if time.monotonic() > deadline:
                break
            sock.sendall(bytes([byte]))
            time.sleep(1)
        out["drip_kept"] += 1
    except OSError:
        out["drip_closed_by_relay"] += 1
    finally:
        sock.close()


def oversize(host: str, cafile: str, size: int, out: dict) -> None:
    """One message over the size limit, not announced with SIZE=: the relay must refuse it."""
    body = b"From: a@b.example\r\nTo: c@d.example\r\nSubject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * (size // 1000)
    try:
        with smtplib.SMTP(host, 25, local_hostname="big.example.test", timeout=120) as conn:
            conn.starttls(context=ssl.create_default_context(cafile=cafile))
            conn.sendmail("a@b.example", [f"nobody@{host}"], body)
        out["oversize"] = [250, "accepted"]
    except smtplib.SMTPResponseException as e:
        out["oversize"] = [e.smtp_code, e.smtp_error.decode(errors="replace")]
    except (smtplib.SMTPException, OSError) as e:
        out["oversize"] = [0, repr(e)]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--cafile", required=True)
    p.add_argument("--idle", type=int, default=200)
    p.add_argument("--drip", type=int, default=5)
    p.add_argument("--hold", type=float, default=40)
    p.add_argument("--oversize", type=int, default=0, help="bytes of the oversized message (0: none)")
    a = p.parse_args()
    out = {"idle_opened": 0, "idle_refused": 0, "idle_closed_by_relay": 0, "drip_refused": 0, "drip_kept": 0,
           "drip_closed_by_relay": 0, "oversize": None}
    threads = [threading.Thread(target=idle, args=(a.host, a.idle, a.hold, out))]
    threads += [threading.Thread(target=drip, args=(a.host, a.hold, out)) for _ in range(a.drip)]
    if a.oversize:
        threads.append(threading.Thread(target=oversize, args=(a.host, a.cafile, a.oversize, out)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
