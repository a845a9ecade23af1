"""What the lab's cached builds share: counting a step's CPU time, and running builds side by side.

The lab builds two things once into its cache (the patched Dovecot library and the iroh
relay). They need different resources at different times (the Dovecot build mostly
waits on apt and configure, cargo mostly compiles), so `up` runs them at the same time
rather than one after the other; on an empty cache that saves the shorter one's time.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


def run_counted(cmd: list[str], *, env: Mapping[str, str], stdout: IO[Any] | int) -> tuple[int, float]:
    """Run `cmd` to its end; return its exit code and the CPU seconds (user + system) it
    and every process below it used.

    The CPU time is read from the child's own wait status, not from the whole process's
    children counters: with two builds running in two threads, those counters would mix
    both builds. `stdout` must be a file or DEVNULL, not a pipe (nothing reads one here).
    """
    proc = subprocess.Popen(cmd, env=dict(env), stdout=stdout, stderr=subprocess.STDOUT)
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime


class Clock:
    """Wall and CPU seconds of one build, for its build.json."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.cpu = 0.0

    def add(self, cpu_seconds: float) -> None:
        self.cpu += cpu_seconds

    def figures(self) -> dict[str, float]:
        """build_seconds is wall time (what a waiting CI run sees); cpu_seconds does not
        grow when other work shares the machine, so it compares builds across loads."""
        return {"build_seconds": round(time.monotonic() - self.started, 1),
                "cpu_seconds": round(self.cpu, 1)}


def prefixed(progress: Progress, name: str) -> Progress:
    """Progress lines of one build, marked with its name (two builds print interleaved)."""
    return lambda msg: progress(f"[{name}] {msg}")


@dataclass(frozen=True)
class Build:
    """One cached build: what makes (or finds) it, and where its log is when it fails."""

    run: Callable[[Progress], Any]
    log: Path


class BuildFailed(RuntimeError):
    """One or more builds failed; the message names each with its log."""


def run_side_by_side(builds: Mapping[str, Build], progress: Progress) -> dict[str, Any]:
    """Run each build in its own thread and return each one's result by name.

    Every build runs to its end even when another fails (stopping it would only leave a
    .partial to be redone from the start next time); then BuildFailed is raised naming
    every build that failed, its error and its log. Each build still takes its own lock
    file, so two labs never build the same cache entry at once.
    """
    results: dict[str, Any] = {}
    errors: dict[str, BaseException] = {}

    def one(name: str, build: Build) -> None:
        try:
            results[name] = build.run(prefixed(progress, name))
        except BaseException as e:  # raised again in the calling thread below
            log.debug("build %s failed", name, exc_info=True)
            errors[name] = e

    threads = [threading.Thread(target=one, args=(n, b), name=f"build-{n}") for n, b in builds.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        text = "\n".join(f"the {name} build failed (log: {builds[name].log}): {e}" for name, e in errors.items())
        raise BuildFailed(text) from next(iter(errors.values()))
    return results
