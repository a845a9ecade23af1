#!/usr/bin/env python3
"""Runs a batch of hostile cases against the relays' real front doors, from the lab's client:
port 25 (STARTTLS, as another mail server), submission on 465 (as a logged-in user), and
HTTPS (nginx: /mxdeliv, /new). Reads a JSON list of cases from a file, prints a JSON list of
results: per case the final code (SMTP reply or HTTP status; 0 when the connection broke)
and how long it took. Each case has a time bound.

  hostilelab.py --cafile CA CASES.json

A case: {"kind": "smtp25"|"submit"|"https", "host": ..., and for SMTP "mail_from", "rcpt",
"data" (text, sent as UTF-8 bytes), "login": [addr, password] for submit; for HTTPS
"method", "path", "headers" {name: value}, "body" (text)}.
"""

from __future__ import annotations

import argparse
import json
import smtplib
import socket
import ssl
import sys
import time

TIME_BOUND = 30


def smtp_case(case: dict, ctx: ssl.SSLContext) -> tuple[int, str]:
    data = case["data"].encode("utf-8", "surrogateescape")
    try:
        if case["kind"] == "submit":
            conn = smtplib.SMTP_SSL(case["host"], 465, context=ctx, timeout=TIME_BOUND)
        else:
            conn = smtplib.SMTP(case["host"], 25, local_hostname="mta.example.test", timeout=TIME_BOUND)
        with conn:
            if case["kind"] == "submit":
                conn.login(*case["login"])
            else:
                conn.starttls(context=ctx)
            refused = conn.sendmail(case["mail_from"], [case["rcpt"]], data)
            if refused:
                code, text = next(iter(refused.values()))
                return code, text.decode(errors="replace")
            return 250, "OK"
    except smtplib.SMTPRecipientsRefused as e:
        code, text = next(iter(e.recipients.values()))
        return code, text.decode(errors="replace")
    except smtplib.SMTPResponseException as e:
        return e.smtp_code, e.smtp_error.decode(errors="replace")
    except (socket.timeout, TimeoutError) as e:
        return -1, f"timeout: {e!r}"
    except (smtplib.SMTPException, OSError) as e:
        return 0, repr(e)


def https_case(case: dict, ctx: ssl.SSLContext) -> tuple[int, str]:
    """One request written byte by byte (so that hostile header values go out as they are)."""
    body = case.get("body", "").encode("utf-8", "surrogateescape")
    headers = {"Host": case["host"], "Connection": "close", **case.get("headers", {})}
    if "Content-Length" not in headers and "Transfer-Encoding" not in headers:
        headers["Content-Length"] = str(len(body))
    head = f"{case['method']} {case['path']} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    try:
        with socket.create_connection((case["host"], 443), timeout=TIME_BOUND) as raw:
            with ctx.wrap_socket(raw, server_hostname=case["host"]) as sock:
                sock.sendall(head.encode("utf-8", "surrogateescape") + b"\r\n" + body)
                answer = b""
                while b"\r\n" not in answer:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
        status = answer.split(b"\r\n", 1)[0].decode(errors="replace")
        parts = status.split()
        if len(parts) < 2 or not parts[1].isdigit():
            return 0, f"no HTTP status: {status!r}"
        return int(parts[1]), status
    except (socket.timeout, TimeoutError) as e:
        return -1, f"timeout: {e!r}"
    except OSError as e:
        return 0, repr(e)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--cafile", required=True)
    p.add_argument("cases")
    a = p.parse_args()
    ctx = ssl.create_default_context(cafile=a.cafile)
    results = []
    for case in json.load(open(a.cases)):
        started = time.monotonic()
        code, text = https_case(case, ctx) if case["kind"] == "https" else smtp_case(case, ctx)
        results.append({"code": code, "text": text[:200], "seconds": round(time.monotonic() - started, 2)})
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
