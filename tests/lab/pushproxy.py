#!/usr/bin/env python3
"""A stand-in for the Delta Chat notifications proxy, for the lab.

Answers ``POST /notify`` like the real proxy (the body is the device token) and appends
one JSON line per request to --log: arrival time (Unix seconds, float), path, body. The
answer's status is --status (200; 410 tells the relay the token is dead). Stdlib only,
so it runs on the client host with whatever Python the machine has.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def make_handler(log_path: str, status: int, lock: threading.Lock):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode(errors="replace")
            record = {"time": time.time(), "path": self.path, "token": body}
            with lock, open(log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    return Handler


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--listen", default="0.0.0.0")
    p.add_argument("--port", type=int, default=9999)
    p.add_argument("--log", required=True, help="file to append one JSON line per request to")
    p.add_argument("--status", type=int, default=200, help="HTTP status to answer with")
    a = p.parse_args(argv)
    server = ThreadingHTTPServer((a.listen, a.port), make_handler(a.log, a.status, threading.Lock()))
    print(f"push proxy listening on {a.listen}:{a.port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
