#!/usr/bin/env python3
"""Run every ``bench_*.py`` next to this file and print one table: figure, measured, goal, met.

Benchmarks run one at a time so that they do not compete for CPU and disk
and distort each other's figures. Each runs in its own process with the
same Python, so it measures the chatmaild on the path. Each prints its
figures as ``@result <key> <value>`` lines (benchlib.report); everything
else it prints is shown only with ``--verbose``. The closing table holds the
goals of the performance issue, so that one run says which are met on this
machine. A figure no benchmark printed shows as "not measured", never as met.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from benchlib import RESULT_PREFIX

HERE = Path(__file__).resolve().parent
FULL_EXPIRE_TREE = 10_000 * 100

# (figure, result key, unit, goal, "min" if the value must reach the goal, "max" if stay below)
GOALS: list[tuple[str, str, str, float, str]] = [
    ("filtermail outgoing, 1 client", "filtermail.outgoing.c1", "msg/s", 250, "min"),
    ("filtermail outgoing, 8 clients", "filtermail.outgoing.c8", "msg/s", 360, "min"),
    ("filtermail incoming + DKIM, 1 client", "filtermail.incoming.c1", "msg/s", 250, "min"),
    ("filtermail incoming + DKIM, 8 clients", "filtermail.incoming.c8", "msg/s", 330, "min"),
    ("expire dry run, time", "expire.dry.seconds", "s", 2.1, "max"),
    ("expire dry run, peak PSS of all its processes", "expire.dry.pss_mib", "MiB", 21, "max"),
    ("expire --remove, time", "expire.remove.seconds", "s", 4.0, "max"),
    ("account creation rate", "auth.create.rate", "/s", 550, "min"),
    ("account creation p99", "auth.create.p99_ms", "ms", 10, "max"),
    ("logins, 1 connection", "auth.login.c1.rate", "/s", 6000, "min"),
    ("idle RSS, all daemons together", "memory.total_mb", "MB", 100, "max"),
]
SCALED_WITH_TREE = {"expire.dry.seconds", "expire.remove.seconds"}


def run_one(script: Path, quick: bool, verbose: bool) -> tuple[dict[str, tuple[float, str]], int]:
    """Run one benchmark; its figures by key (value, note) and its exit status."""
    command = [sys.executable, str(script)] + (["--quick"] if quick else [])
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    figures: dict[str, tuple[float, str]] = {}
    for line in proc.stdout:
        if line.startswith(RESULT_PREFIX):
            key, value, *note = line[len(RESULT_PREFIX) :].split(maxsplit=2)
            figures[key] = (float(value), note[0].strip() if note else "")
        elif verbose:
            print(line, end="", flush=True)
    return figures, proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to each benchmark (smaller runs)")
    parser.add_argument("-k", metavar="SUBSTRING", help="only benchmarks whose file name contains SUBSTRING")
    parser.add_argument("-v", "--verbose", action="store_true", help="show each benchmark's own output")
    args = parser.parse_args(argv)

    scripts = sorted(p for p in HERE.glob("bench_*.py") if not args.k or args.k in p.name)
    if not scripts:
        print(f"no bench_*.py in {HERE}" + (f" matching {args.k!r}" if args.k else ""), file=sys.stderr)
        return 1
    figures: dict[str, tuple[float, str]] = {}
    failed: list[str] = []
    for script in scripts:
        started = time.perf_counter()
        print(f"running {script.name}" + (" --quick" if args.quick else ""), file=sys.stderr, flush=True)
        found, returncode = run_one(script, args.quick, args.verbose)
        figures.update(found)
        status = "ok" if returncode == 0 else f"FAILED (exit {returncode})"
        print(f"  {script.name}: {time.perf_counter() - started:.1f}s {status}", file=sys.stderr, flush=True)
        if returncode:
            failed.append(script.name)

    tree = figures.get("expire.tree_messages", (FULL_EXPIRE_TREE, ""))[0]
    scale = tree / FULL_EXPIRE_TREE
    print(f"{'figure':<40}{'measured':>14}{'goal':>16}  met")
    for figure, key, unit, goal, direction in GOALS:
        if key in SCALED_WITH_TREE and scale != 1:
            goal, figure = goal * scale, f"{figure} (tree x{scale:g})"
        sign = ">=" if direction == "min" else "<="
        goal_text = f"{sign} {goal:g} {unit}"
        if key not in figures:
            print(f"{figure:<40}{'not measured':>14}{goal_text:>16}  no")
            continue
        value, note = figures[key]
        met = value >= goal if direction == "min" else value <= goal
        measured = f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
        print(f"{figure:<40}{measured:>14}{goal_text:>16}  {'yes' if met else 'no'}" + (f"  ({note})" if note else ""))
    for key in sorted(k for k in figures if k.endswith(".cpu_ms")):
        print(f"  daemon CPU per request, {key.removesuffix('.cpu_ms')}: {figures[key][0]:.3f} ms")
    for key in sorted(k for k in figures if k.endswith(".first_request_ms")):
        name = key.removeprefix("memory.").removesuffix(".first_request_ms")
        running = figures.get(f"memory.{name}.running_mib", (0.0, ""))[0]
        print(f"  {name}, started on demand: first answer after {figures[key][0]:.0f} ms "
              f"(start included), {running:.0f} MiB while it runs, 0 once it left")
    if "memory.total_pss_mb" in figures:
        print(f"  idle memory of all daemons as PSS (shared pages divided): {figures['memory.total_pss_mb'][0]:.0f} MB")
    if scale != 1:
        print(f"  expire ran on a SMALLER tree ({tree:.0f} messages, not {FULL_EXPIRE_TREE}); its time goals are scaled")
    if failed:
        print(f"benchmarks that failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
