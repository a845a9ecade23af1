#!/usr/bin/env python3
"""Measure the idle resident memory of every chatmaild daemon of one relay, and their sum.

A small relay (a Raspberry Pi, a 1 GB VPS) runs doveauth, filtermail twice
(outgoing and incoming), chatmail-metadata, chatmail-lastlogin and
chatmail-newemail all the time, so their idle memory is a fixed cost of
every relay. This starts each one as a real process with a temporary
chatmail.ini (free loopback ports, sockets in a temporary directory), waits
until each serves, lets them settle and reads VmRSS from /proc. Every
process is stopped before it exits.

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="accepted for run_all.py; the run is short anyway")
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
        daemons: dict[str, tuple[list[str], int | Path]] = {
            "doveauth": (
                py + ["chatmaild.doveauth", str(ini), "--listen", f"127.0.0.1:{ports['auth']}",
                      "--token-file", str(work / "token")],
                ports["auth"],
            ),
            "filtermail outgoing": (py + ["chatmaild.filtermail", str(ini), "outgoing"], ports["out"]),
            "filtermail incoming": (py + ["chatmaild.filtermail", str(ini), "incoming"], ports["in"]),
            "chatmail-metadata": (
                py + ["chatmaild.metadata", str(ini), "--socket", str(work / "metadata.sock")],
                work / "metadata.sock",
            ),
            "chatmail-lastlogin": (
                py + ["chatmaild.lastlogin", str(ini), "--socket", str(work / "lastlogin.sock")],
                work / "lastlogin.sock",
            ),
            "chatmail-newemail": (
                py + ["chatmaild.newemail", str(ini), "--listen", f"127.0.0.1:{ports['new']}"],
                ports["new"],
            ),
        }
        env = dict(os.environ, CREDENTIALS_DIRECTORY=str(work))
        procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            for name, (argv_, _) in daemons.items():
                procs[name] = subprocess.Popen(argv_, env=env, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + START_TIMEOUT_SECONDS
            for name, (_, target) in daemons.items():
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
            print(f"{'together':<22}{total / 1024:>8.1f} MiB{total_pss / 1024:>8.1f} MiB")
            report("memory.total_mb", total * 1024 / 1e6, f"{len(procs)} processes")
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
