"""Resource gate for new accounts: load, available memory, free disk.

A relay that is already short of CPU, memory or disk should keep serving the
accounts it has rather than take on new ones, so doveauth asks this module
before it creates an account (existing accounts never pass through here).

Three readings, each compared with a setting of ``chatmail.ini``:

* the 1-minute load average against ``max_load_1m``. It is deliberately not
  divided by the number of CPUs: on Linux it includes processes waiting for
  disk I/O, and a relay stuck on I/O is overloaded however many CPUs it has;
* ``MemAvailable`` of ``/proc/meminfo`` (what the kernel can hand out without
  swapping, page cache included) against ``min_available_memory``;
* the space unprivileged users may still use on the file system of
  ``mailboxes_dir`` against ``min_free_disk_space``.

A reading that fails is logged and skipped: a missing ``/proc`` in a
container or a mailboxes directory that does not exist yet must not stop
every registration, and the remaining checks still apply. The readers are
parameters so tests can feed in any situation.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path

from .config import Config

log = logging.getLogger(__name__)

MIB = 1024 * 1024
KIB = 1024


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Whether the relay can take a new account; ``reason`` says which limit was hit."""

    ok: bool
    reason: str = ""


def read_available_memory_mb(meminfo_path: str | Path = "/proc/meminfo") -> float:
    """Return ``MemAvailable`` from a ``/proc/meminfo``-style file, in MiB.

    Raises :class:`ValueError` naming the file if the field is missing or
    malformed (kernels before 3.14 do not have it).
    """
    with open(meminfo_path, encoding="ascii") as fp:
        for line in fp:
            name, _, rest = line.partition(":")
            if name == "MemAvailable":
                fields = rest.split()
                if len(fields) != 2 or fields[1] != "kB" or not fields[0].isdigit():
                    raise ValueError(f"{meminfo_path}: cannot parse line {line.strip()!r}")
                return int(fields[0]) * KIB / MIB
    raise ValueError(f"{meminfo_path}: no MemAvailable line")


def free_disk_mb(path: str | Path, statvfs: Callable[[str | Path], os.statvfs_result] = os.statvfs) -> float:
    """Return the MiB that an unprivileged user can still write on the file system of ``path``."""
    st = statvfs(path)
    return st.f_bavail * st.f_frsize / MIB


def has_sufficient_resources(
    config: Config,
    *,
    loadavg: Callable[[], tuple[float, float, float]] = os.getloadavg,
    meminfo_path: str | Path = "/proc/meminfo",
    statvfs: Callable[[str | Path], os.statvfs_result] = os.statvfs,
) -> Verdict:
    """Check load, then memory, then disk; the first limit exceeded rejects.

    A reading that raises is logged ("ignoring unreadable system limit") and
    does not count against the relay.
    """
    try:
        load = loadavg()[0]
    except (OSError, ValueError, IndexError) as exc:
        log.warning("ignoring unreadable system limit: load average: %s", exc)
    else:
        if load > config.max_load_1m:
            return _reject(f"load avg {load:.2f} > {config.max_load_1m}")

    try:
        memory = read_available_memory_mb(meminfo_path)
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable system limit: available memory: %s", exc)
    else:
        if memory < config.min_available_memory:
            return _reject(f"available memory {memory:.0f}MB < {config.min_available_memory}MB")

    try:
        disk = free_disk_mb(config.mailboxes_dir, statvfs)
    except OSError as exc:
        log.warning("ignoring unreadable system limit: free disk on %s: %s", config.mailboxes_dir, exc)
    else:
        if disk < config.min_free_disk_space:
            return _reject(
                f"free disk {disk:.0f}MB < {config.min_free_disk_space}MB on {config.mailboxes_dir}"
            )

    return Verdict(True)


def _reject(reason: str) -> Verdict:
    log.warning("registration rejected: %s", reason)
    return Verdict(False, reason)
