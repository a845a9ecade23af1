#!/usr/bin/env python3
"""Benchmark chatmail-expire on a relay-sized mail tree: wall time, peak memory, exactness.

The daily expiry job walks every file of every account. On a relay with
many accounts it must finish well within a day and, above all, must not
grow with the size of the tree: it streams one account at a time. This
builds a tree of N accounts with M small messages each (written directly,
with mtimes set so that a known share has expired), syncs it to disk (a
relay's mail was written long before the daily job runs; without the sync
the kernel's write-back of the million files just created, and the journal
commits it brings, fall into the measured runs), runs
``chatmail-expire`` in a child process, first as a dry run and then with
``--remove``, and prints for each run the wall time and the peak memory of
the job: the job forks worker processes (``--jobs``), so every 20 ms the
proportional set size (PSS, shared pages divided among the processes that
share them) and the resident size of the job and all its descendants are
read from ``/proc`` and summed; the peak of each sum is printed, the PSS sum
being the figure, beside the largest single process's ``ru_maxrss``. Then
it checks that exactly the expected files went:

* every 20th account has not logged in for 100 days: removed entirely;
* in the others every 4th message is 25 days old and goes, the rest
  (1-19 days old) stay, as do password, marker, index and uid files;
  ``maildirsize`` goes because messages went.

A measurement to read, not a test; it exits 1 if the check fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchlib import report

DOMAIN = "bench.example.org"
DAY = 86400
INACTIVE_EVERY = 20
EXPIRED_EVERY = 4
MESSAGE_BYTES = 300
KEPT_FILES = ("password", "enforceE2EEincoming", "dovecot.index", "dovecot-uidlist")


def account_name(i: int) -> str:
    return f"u{i:07d}@{DOMAIN}"


def message_name(now: float, i: int, age_days: float) -> str:
    return f"{int(now - age_days * DAY)}.M{i}P1.bench,S={MESSAGE_BYTES},W={MESSAGE_BYTES + 10}:2,S"


def message_age(j: int) -> float:
    """25 days for every EXPIRED_EVERY-th message, else 1-19 days."""
    return 25.0 if j % EXPIRED_EVERY == 0 else 1 + j % 19


def write_file(path: str, data: bytes, mtime: float) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.utime(fd, (mtime, mtime))
    finally:
        os.close(fd)


def build_tree(mailboxes: Path, accounts: int, messages: int, now: float) -> None:
    """Write the tree; progress to stderr every 1000 accounts."""
    payload = b"x" * MESSAGE_BYTES
    started = time.monotonic()
    for i in range(accounts):
        base = mailboxes / account_name(i)
        for sub in ("cur", "new", "tmp"):
            (base / sub).mkdir(parents=True)
        login_age = 100 if i % INACTIVE_EVERY == 0 else 1
        for name in KEPT_FILES:
            write_file(str(base / name), b"data", now - (login_age if name == "password" else 300) * DAY)
        write_file(str(base / "maildirsize"), b"1000 0\n", now)
        for j in range(messages):
            age = message_age(j)
            sub = "cur" if j % 3 else "new"
            write_file(str(base / sub / message_name(now, j, age)), payload, now - age * DAY)
        if (i + 1) % 1000 == 0:
            print(
                f"  built {i + 1}/{accounts} accounts, {time.monotonic() - started:.0f}s",
                file=sys.stderr,
                flush=True,
            )


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (children of any of their threads), as far as they still run."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{current}/task/{task}/children", encoding="ascii") as fp:
                    pending.extend(int(child) for child in fp.read().split())
            except FileNotFoundError:
                pass
    return found


class MemorySampler(threading.Thread):
    """Peaks of the summed PSS and summed RSS (KiB) of a process and its descendants."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_pss = self.peak_rss = 0
        self.done = threading.Event()

    def sample(self) -> None:
        pss = rss = 0
        for pid in process_tree(self.pid):
            try:
                with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as fp:
                    for line in fp:
                        if line.startswith("Pss:"):
                            pss += int(line.split()[1])
                        elif line.startswith("Rss:"):
                            rss += int(line.split()[1])
            except (FileNotFoundError, ProcessLookupError):
                pass  # ended meanwhile
        self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self.sample()


def run_child(args: list[str]) -> tuple[float, MemorySampler, os.struct_rusage, str]:
    """Run a command; return wall seconds, its memory peaks, its resource usage (wait4: its
    CPU times include the workers it waited for; ``ru_maxrss`` is the largest single
    process's peak RSS in KiB) and its stdout."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=sys.stderr)
    sampler = MemorySampler(proc.pid)
    sampler.start()
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    sampler.done.set()  # the job has closed its output: it is ending (a zombie has no memory)
    sampler.join()
    _, status, rusage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} exited with {proc.returncode}")
    return wall, sampler, rusage, out


def figures_line(wall: float, sampler: MemorySampler, rusage: os.struct_rusage) -> str:
    """Wall and CPU time (CPU hardly depends on what else the machine does), then the memory."""
    maxrss = rusage.ru_maxrss
    return (
        f"{wall:6.2f}s wall, CPU {rusage.ru_utime:.2f}s user + {rusage.ru_stime:.2f}s system; "
        f"peak memory of all its processes: PSS {sampler.peak_pss / 1024:.1f} MiB, "
        f"RSS {sampler.peak_rss / 1024:.1f} MiB (summed, sampled every {sampler.interval * 1000:.0f} ms); "
        f"largest single process {maxrss / 1024:.1f} MiB (ru_maxrss)"
    )


def count_files(top: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(top))


def verify(mailboxes: Path, accounts: int, messages: int, now: float) -> list[str]:
    """Compare the tree with what should be left; return the differences (at most 10)."""
    problems: list[str] = []
    for i in range(accounts):
        base = mailboxes / account_name(i)
        if i % INACTIVE_EVERY == 0:
            if base.exists():
                problems.append(f"{base}: inactive account not removed")
            continue
        expected = {name for name in KEPT_FILES}
        for j in range(messages):
            age = message_age(j)
            if age < 20:
                expected.add(f"{'cur' if j % 3 else 'new'}/{message_name(now, j, age)}")
        present = {name for name in os.listdir(base) if name not in ("cur", "new", "tmp")}
        for sub in ("cur", "new", "tmp"):
            present.update(f"{sub}/{name}" for name in os.listdir(base / sub))
        if present != expected:
            extra = sorted(present - expected)[:3]
            missing = sorted(expected - present)[:3]
            problems.append(f"{base}: unexpected {extra}, missing {missing}")
        if len(problems) >= 10:
            break
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build a mail tree of ACCOUNTS x MESSAGES small files, run chatmail-expire on it "
        "(dry run, then --remove) and print wall time and peak memory; check what was removed.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a tenth of the tree (1000 x 100), so it runs in seconds; says so in its output",
    )
    parser.add_argument("--accounts", type=int, help="number of accounts (default 10000)")
    parser.add_argument("--messages", type=int, help="messages per account (default 100)")
    parser.add_argument(
        "--dir", type=Path, help="where to build the tree (default: a new temporary directory, removed after)"
    )
    args = parser.parse_args(argv)
    accounts = args.accounts or (1000 if args.quick else 10000)
    messages = args.messages or 100
    if accounts < 1 or messages < 1:
        parser.error("--accounts and --messages must be at least 1")

    workdir = Path(tempfile.mkdtemp(prefix="bench-expire-", dir=args.dir))
    try:
        mailboxes = workdir / "mail"
        ini = workdir / "chatmail.ini"
        ini.write_text(f"[params]\nmail_domain = {DOMAIN}\nmailboxes_dir = {mailboxes}\n")
        now = time.time()

        started = time.perf_counter()
        build_tree(mailboxes, accounts, messages, now)
        total = count_files(mailboxes)
        print(
            f"built {accounts} accounts x {messages} messages = {total} files "
            f"in {time.perf_counter() - started:.1f}s"
        )
        started = time.perf_counter()
        os.sync()
        print(f"synced to disk in {time.perf_counter() - started:.1f}s (not measured)")

        expire = [sys.executable, "-m", "chatmaild.expire", str(ini), "--progress-every", "2000"]
        if accounts * messages < 10000 * 100:
            print(f"SMALLER TREE than the goal's 10000 x 100: {accounts} x {messages}")
        report("expire.tree_messages", accounts * messages, f"{accounts}x{messages}")
        wall, memory, rusage, out = run_child(expire)
        print(f"dry run:  {figures_line(wall, memory, rusage)}")
        report("expire.dry.seconds", wall)
        report("expire.dry.pss_mib", memory.peak_pss / 1024)
        print("  " + out.strip().splitlines()[-2])
        after_dry = count_files(mailboxes)
        wall, memory, rusage, out = run_child(expire + ["--remove"])
        print(f"--remove: {figures_line(wall, memory, rusage)}")
        report("expire.remove.seconds", wall)
        report("expire.remove.pss_mib", memory.peak_pss / 1024)
        print("  " + out.strip().splitlines()[-1])

        problems = verify(mailboxes, accounts, messages, now)
        if after_dry != total:
            problems.insert(0, f"dry run changed the file count from {total} to {after_dry}")
        remaining = count_files(mailboxes)
        print(f"files: {total} before, {remaining} after, {total - remaining} removed")
        if problems:
            print("CHECK FAILED:\n  " + "\n  ".join(problems))
            return 1
        print("check: exactly the expected files were removed")
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
