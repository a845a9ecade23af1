#!/usr/bin/env python3
"""Time from a message file landing in a maildir's new/ to Dovecot's `* n EXISTS` in IDLE,
with Debian 13's stock libdovecot-storage and with the patched one (no 500 ms delay).

Needs no lab: it mounts its own overlay of the lab's cached Debian 13 root filesystem, and
in a chroot there runs Dovecot's imap binary pre-authenticated on a pipe (no network, no
master process), IDLEing on a fresh maildir. Each round renames a file from tmp/ into
new/, as a delivery does, and waits for the EXISTS line; the patched run loads the cached
library from dovecot_build.py in front of the stock one. Bounded: --rounds per variant,
each waiting at most --timeout seconds.
"""

from __future__ import annotations

import argparse
import os
import selectors
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import dovecot_build  # noqa: E402
import rootfs  # noqa: E402

VMAIL = "vmail"
BENCH = "/bench"
CONF = f"""dovecot_config_version = 2.4.1
dovecot_storage_version = 2.4.1
base_dir = {BENCH}/run
state_dir = {BENCH}/state
log_path = {BENCH}/dovecot.log
mail_driver = maildir
mail_path = ~/Maildir
mail_home = {BENCH}/home
"""
MESSAGE = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: idle\r\n\r\nhello\r\n"


class Imap:
    """Dovecot's imap binary on a pipe, logged in as `bench` (PREAUTH)."""

    def __init__(self, root: Path, library_dir: str | None):
        env = {"PATH": "/usr/bin:/bin", "USER": "bench", "HOME": f"{BENCH}/home",
               "DOVECOT_PRESERVE_ENVS": "USER HOME LD_LIBRARY_PATH"}
        if library_dir:
            env["LD_LIBRARY_PATH"] = library_dir
        self.log = root / BENCH.lstrip("/") / "imap.log"
        chroot = shutil.which("chroot") or "/usr/sbin/chroot"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [chroot, f"--userspec={VMAIL}:{VMAIL}", str(root),
                 "/usr/lib/dovecot/imap", "-c", f"{BENCH}/dovecot.conf"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.stdout, selectors.EVENT_READ)
        self.buf = b""

    def send(self, line: str) -> None:
        self.stdin.write(line.encode() + b"\r\n")
        self.stdin.flush()

    def until(self, prefix: bytes, deadline: float) -> bytes:
        """Read lines until one starts with prefix; raise TimeoutError at the deadline."""
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                if line.startswith(prefix):
                    return line
            left = deadline - time.monotonic()
            if left <= 0 or not self.sel.select(left):
                raise TimeoutError(f"no {prefix!r} from imap")
            chunk = os.read(self.stdout.fileno(), 65536)
            if not chunk:
                raise EOFError("imap exited: " + self.log.read_text(errors="replace")[-2000:])
            self.buf += chunk

    def storage_library(self) -> str:
        """The libdovecot-storage file the imap process has mapped."""
        children = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        pids = children.stdout.split()
        for pid in [str(self.proc.pid), *pids]:
            try:
                for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                    if "libdovecot-storage.so" in line:
                        return line.split(None, 5)[5]
            except OSError:
                continue
        return "?"

    def close(self) -> None:
        try:
            self.send("DONE")
            self.send("z LOGOUT")
            self.stdin.close()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


def measure(root: Path, library_dir: str | None, rounds: int, timeout: float,
            pause: float) -> tuple[list[float], str]:
    """Seconds from rename into new/ to `* n EXISTS`, one per round. The pause between
    rounds lets Dovecot settle: its own index writes after a sync are changes in the
    maildir too, and a delivery right after them would find the stock delay half over."""
    home = root / BENCH.lstrip("/") / "home"
    if home.exists():
        shutil.rmtree(home)
    maildir = home / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True)
    uid, gid = dovecot_build._ids(root, VMAIL)
    for path in [home, *home.rglob("*")]:
        os.chown(path, uid, gid)
    imap = Imap(root, library_dir)
    try:
        imap.until(b"* PREAUTH", time.monotonic() + 10)
        imap.send("a SELECT INBOX")
        imap.until(b"a OK", time.monotonic() + 10)
        imap.send("b IDLE")
        imap.until(b"+ ", time.monotonic() + 10)
        mapped = imap.storage_library()
        times = []
        for n in range(1, rounds + 1):
            name = f"{time.time_ns()}.M{n}P{os.getpid()}.bench,S={len(MESSAGE)}"
            tmp = maildir / "tmp" / name
            tmp.write_bytes(MESSAGE)
            os.chown(tmp, uid, gid)
            t0 = time.monotonic()
            os.rename(tmp, maildir / "new" / name)
            imap.until(f"* {n} EXISTS".encode(), t0 + timeout)
            times.append(time.monotonic() - t0)
            time.sleep(pause)
        return times, mapped
    finally:
        imap.close()


def mount_overlay(base: Path, where: Path) -> Path:
    upper, work, merged = where / "upper", where / "work", where / "merged"
    for d in (upper, work, merged):
        d.mkdir()
    options = f"lowerdir={base},upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(merged)], check=True)
    subprocess.run(["mount", "-t", "proc", "proc", str(merged / "proc")], check=True)
    subprocess.run(["mount", "--bind", "/dev", str(merged / "dev")], check=True)
    return merged


def unmount(merged: Path) -> None:
    for sub in ("dev", "proc", ""):
        subprocess.run(["umount", str(merged / sub)], check=False)


def summary(times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    p90 = ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))]
    return f"p50 {statistics.median(ms):6.1f} ms   p90 {p90:6.1f} ms   max {ms[-1]:6.1f} ms   (n={len(ms)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--rounds", type=int, default=20, help="deliveries per variant (default 20)")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds to wait for one EXISTS (default 5)")
    parser.add_argument("--pause", type=float, default=0.6, help="seconds between deliveries (default 0.6)")
    parser.add_argument("--rootfs", type=Path,
                        help="Debian 13 root filesystem (default: the lab's cached one)")
    parser.add_argument("--library", type=Path, help="patched libdovecot-storage.so.0.0.0 "
                        "(default: dovecot_build.py's cached one for the root's Dovecot)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root (overlay mount, chroot)")
    base = args.rootfs or rootfs.ensure_rootfs(lambda m: print(m, file=sys.stderr))
    library = args.library or dovecot_build.cached_library(dovecot_build.debian_version(base))
    if library is None:
        parser.error("no patched library cached for this Dovecot; run tests/lab/dovecot_build.py first")
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
        merged = mount_overlay(base, Path(tmp))
        try:
            (merged / BENCH.lstrip("/")).mkdir()
            (merged / BENCH.lstrip("/") / "dovecot.conf").write_text(CONF)
            uid, gid = dovecot_build._ids(merged, VMAIL)
            for sub in ("run", "state"):
                (merged / BENCH.lstrip("/") / sub).mkdir()
                os.chown(merged / BENCH.lstrip("/") / sub, uid, gid)
            libdir = merged / BENCH.lstrip("/") / "patched"
            libdir.mkdir()
            shutil.copy(library, libdir / "libdovecot-storage.so.0")
            version = dovecot_build.debian_version(base)
            print(f"Dovecot {version}: file renamed into new/ -> '* n EXISTS' in IDLE")
            for label, libs in (("stock", None), ("patched", f"{BENCH}/patched")):
                times, mapped = measure(merged, libs, args.rounds, args.timeout, args.pause)
                print(f"  {label:8} {summary(times)}   [{mapped}]")
        finally:
            unmount(merged)


if __name__ == "__main__":
    main()
