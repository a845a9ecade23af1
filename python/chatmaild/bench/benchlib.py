"""Measuring helpers the benchmark scripts share (imported from the scripts' own folder)."""

from __future__ import annotations

import signal
import subprocess


def vm_rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` in KiB, from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fp:
        for line in fp:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line")


def pss_kib(pid: int) -> int:
    """Proportional set size of ``pid`` in KiB: shared pages divided among the processes sharing them."""
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as fp:
        for line in fp:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/smaps_rollup has no Pss line")


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0 < q < 1) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


RESULT_PREFIX = "@result "
"""Lines starting with this carry one measured figure to run_all.py, which builds the table."""


def report(key: str, value: float, note: str = "") -> None:
    """Print one figure for run_all.py: ``@result <key> <value> [note]``."""
    print(f"{RESULT_PREFIX}{key} {value:.6g}" + (f" {note}" if note else ""), flush=True)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time ``pid`` has used so far (all its threads), from /proc/<pid>/stat."""
    import os

    with open(f"/proc/{pid}/stat", encoding="ascii") as fp:
        fields = fp.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    """Ask a daemon started by a benchmark to end; kill it if it has not within timeout."""
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
