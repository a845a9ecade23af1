"""The relays run Dovecot with the patched libdovecot-storage (no 500 ms IDLE delay) that
dovecot_build.py rebuilt from Debian's source: the file on disk and the one the running
Dovecot processes have mapped are both the cached build, byte for byte."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import dovecot_build
import pytest
from conftest import labmod


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mapped_storage_libraries(pids: list[int]) -> dict[int, str]:
    """sha256 of the libdovecot-storage each process has mapped, read through
    /proc/PID/map_files (the mapped file itself, even if replaced on disk since)."""
    found = {}
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
        except OSError:
            continue
        for line in maps:
            if "libdovecot-storage.so" in line:
                found[pid] = digest(Path(f"/proc/{pid}/map_files/{line.split()[0]}"))
                break
    return found


@pytest.mark.parametrize("relay", [r.name for r in labmod.RELAYS])
def test_the_relay_runs_the_libdovecot_storage_built_without_the_idle_delay(lab, client, account, relay):
    host = labmod.BY_NAME[relay]
    root = labmod.merged(host)
    version = dovecot_build.debian_version(root)
    cached = dovecot_build.cached_library(version)
    assert cached is not None, f"no patched library cached for Dovecot {version}"
    assert digest(root / dovecot_build.LIBRARY) == digest(cached)
    diversions = subprocess.run(["chroot", str(root), "dpkg-divert", "--list"], check=True,
                                capture_output=True, text=True).stdout
    assert f"/{dovecot_build.LIBRARY} to /{dovecot_build.DIVERTED}" in diversions

    # A delivery leaves an lmtp process behind for a while, and it maps the library.
    alice, alice_pw = account(host.domain)
    bob, bob_pw = account(host.domain)
    sent = client("send", alice, alice_pw, "--to", bob)
    assert client("wait", bob, bob_pw, "--token", sent["token"])["ok"]
    mapped = mapped_storage_libraries(labmod.pids_of(host))
    assert mapped, f"no process on {relay} has libdovecot-storage mapped"
    assert set(mapped.values()) == {digest(cached)}
