"""Fixtures for the lab tests: the lab itself (up once per session, down at the end) and
a client that runs mailcheck.py on the lab's client host and returns its JSON answer."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import lab as labmod  # noqa: E402


@pytest.fixture(scope="session")
def lab():
    if os.geteuid() != 0:
        pytest.fail("the lab tests need root (network namespaces, mounts, chroot)")
    labmod.up()
    yield labmod
    if not os.environ.get("CHATMAIL_LAB_KEEP"):
        locks = [lock for r in labmod.CONTAINERS if (lock := labmod.nspawn_lock(r)) is not None]
        labmod.down()
        assert labmod.leftovers(locks) == [], "down leaves nothing behind"


@pytest.fixture(scope="session")
def client(lab):
    def run(*args: str, timeout: float = 120) -> dict:
        cmd = labmod.in_host(labmod.CLIENT, [sys.executable, str(HERE / "mailcheck.py"),
                                             "--cafile", str(labmod.STATE / "ca/ca.pem"), *args])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout)
        return json.loads(out.stdout)

    return run


@pytest.fixture
def account(client):
    """A new account on a relay, created by its first IMAP login."""

    def make(relay: str) -> tuple[str, str]:
        addr = f"{secrets.token_hex(5)[:9]}@{relay}"
        password = "p" + secrets.token_urlsafe(12)  # never "-...", which argparse takes for an option
        result = client("login", addr, password)
        assert result["ok"], result
        return addr, password

    return make


def relay_file(relay: str, path: str) -> Path:
    return labmod.merged(labmod.BY_NAME[relay]) / path.lstrip("/")


def journal(relay: str, unit: str) -> list[str]:
    """A unit's lines in the relay's journal (syslog style: date, host, process: message)."""
    r = labmod.host_run(labmod.BY_NAME[relay], ["journalctl", "-u", unit, "-o", "short", "--no-pager", "-q"],
                        capture=True)
    return r.stdout.splitlines()


def wait_for_journal(relay: str, unit: str, needle: str, timeout: float = 30) -> str:
    """Wait until a unit's journal on a relay has a line with needle; return that line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in journal(relay, unit):
            if needle in line:
                return line
        time.sleep(0.2)
    raise AssertionError(f"{relay}: the journal of {unit} has no line with {needle!r} after {timeout} s")
