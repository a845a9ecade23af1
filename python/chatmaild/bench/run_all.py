#!/usr/bin/env python3
"""Run every ``bench_*.py`` next to this file, one after the other, and print their output.

Benchmarks run one at a time so that they do not compete for CPU and disk
and distort each other's figures. Each runs in its own process with the
same Python, so it measures the installed chatmaild; output is passed
through as it comes, under a header naming the benchmark, and a closing
table gives each one's wall time and exit status.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=f"Run all bench_*.py scripts in {HERE.name}/ in name order and print their output.",
    )
    parser.add_argument("--quick", action="store_true", help="pass --quick to each benchmark (small runs)")
    parser.add_argument(
        "-k",
        metavar="SUBSTRING",
        help="only run benchmarks whose file name contains SUBSTRING, e.g. -k expire",
    )
    args = parser.parse_args(argv)

    scripts = sorted(p for p in HERE.glob("bench_*.py") if not args.k or args.k in p.name)
    if not scripts:
        print(f"no bench_*.py in {HERE}" + (f" matching {args.k!r}" if args.k else ""), file=sys.stderr)
        return 1
    results: list[tuple[str, float, int]] = []
    for script in scripts:
        print(f"=== {script.name}" + (" --quick" if args.quick else ""), flush=True)
        started = time.perf_counter()
        command = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
        returncode = subprocess.run(command, check=False).returncode
        results.append((script.name, time.perf_counter() - started, returncode))
        print(flush=True)

    print("=== summary")
    for name, seconds, returncode in results:
        status = "ok" if returncode == 0 else f"FAILED (exit {returncode})"
        print(f"{name:<28} {seconds:7.1f}s  {status}")
    return 0 if all(rc == 0 for *_, rc in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
