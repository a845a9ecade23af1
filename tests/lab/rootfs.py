"""The lab's Debian 13 root filesystem: built once with debootstrap, then cached.

Every lab host mounts an overlay of this tree, so the relays run Debian 13's Postfix 3.10,
Dovecot 2.4 and systemd 257 whatever Debian the machine itself runs. The cache lives outside any
checkout, under a key made of everything that goes into it (the package list, chatmaild's
dependency declaration and this file's build steps); a changed input makes a new tree,
and a build that dies half-way leaves only a ``.partial`` directory that the next build
removes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

CACHE_DIR = Path(os.environ.get("CHATMAIL_LAB_CACHE", "/var/cache/chatmail-lab"))
SUITE = "trixie"
PACKAGES = [
    "postfix",
    "dovecot-core",
    "dovecot-imapd",
    "dovecot-lmtpd",
    "dovecot-auth-lua",
    # Pigeonhole: the LMTP sieve script that drops a message delivered twice (a client's resend
    # after a lost 250).
    "dovecot-sieve",
    "opendkim",
    "opendkim-tools",
    "nginx-light",
    "libnginx-mod-stream",
    "unbound",
    "pebble",
    "lego",
    "python3",
    "python3-venv",
    "ca-certificates",
    "iproute2",
    "openssl",
    "netbase",
    "coturn",
    "qrencode",
    # Reads the metrics textfile the way services.prometheus.exporters.node does on NixOS.
    "prometheus-node-exporter",
    # Each relay boots Debian's systemd in systemd-nspawn; the units run every service.
    "systemd",
    "systemd-sysv",
    "dbus",
]
VENV = "/opt/chatmaild-venv"
# So that chatmaild's unit tests also run on Debian 13's Python 3.13 (pgpy 0.6 needs
# standard-imghdr there), inside a lab relay.
TEST_PACKAGES = ["pytest", "pgpy", "standard-imghdr", "hypothesis", "mypy"]
VMAIL_UID = 5000
HERE = Path(__file__).resolve().parent
PYPROJECT = HERE.parent.parent / "python" / "chatmaild" / "pyproject.toml"


def cache_key() -> str:
    h = hashlib.sha256()
    h.update(SUITE.encode())
    h.update(" ".join(PACKAGES + TEST_PACKAGES).encode())
    h.update(PYPROJECT.read_bytes())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:16]


def rootfs_path() -> Path:
    return CACHE_DIR / f"rootfs-{cache_key()}"


def _run(cmd: list[str], **kw) -> None:
    subprocess.run(cmd, check=True, **kw)


def _chroot(root: Path, *cmd: str) -> None:
    _run(["chroot", str(root), *cmd])


def ensure_rootfs(progress=print) -> Path:
    """Return the cached root filesystem, building it first when it is missing."""
    root = rootfs_path()
    if (root / ".complete").exists():
        return root
    partial = root.with_name(root.name + ".partial")
    if partial.exists():
        _umount_below(partial)
        shutil.rmtree(partial)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    progress(f"building the Debian 13 root filesystem in {root} (about two minutes, once)")
    _run(
        ["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES), SUITE, str(partial)],
        stdout=subprocess.DEVNULL,
    )
    progress("installing chatmaild's dependencies into the root filesystem")
    shutil.copy("/etc/resolv.conf", partial / "etc/resolv.conf")
    _run(["mount", "-t", "proc", "proc", str(partial / "proc")])
    _run(["mount", "--bind", "/dev", str(partial / "dev")])
    try:
        _chroot(partial, "groupadd", "--system", "--gid", str(VMAIL_UID), "vmail")
        _chroot(
            partial, "useradd", "--system", "--uid", str(VMAIL_UID), "--gid", "vmail",
            "--home-dir", "/home/vmail", "--create-home", "--shell", "/usr/sbin/nologin", "vmail",
        )
        _chroot(partial, "python3", "-m", "venv", VENV)
        src = partial / "tmp/chatmaild-src"
        shutil.copytree(PYPROJECT.parent, src, ignore=shutil.ignore_patterns("tests", "__pycache__", "*.egg-info"))
        # pip inside the tree trusts what this machine trusts for reaching the registry.
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", partial / "tmp/host-ca.crt")
        _run(["chroot", str(partial), f"{VENV}/bin/pip", "install", "--quiet", "--disable-pip-version-check",
              "/tmp/chatmaild-src", *TEST_PACKAGES], env={**os.environ, "PIP_FIND_LINKS": "", "SSL_CERT_DIR": "",
                   **{k: "/tmp/host-ca.crt" for k in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")}})
        shutil.rmtree(src)
        (partial / "tmp/host-ca.crt").unlink()
    finally:
        _umount_below(partial)
    (partial / "etc/resolv.conf").write_text("")
    (partial / ".complete").write_text(cache_key() + "\n")
    partial.rename(root)
    _prune_old(root)
    progress(f"root filesystem ready: {root}")
    return root


def _umount_below(path: Path) -> None:
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for m in sorted((m for m in mounts if m.startswith(str(path) + "/")), reverse=True):
        subprocess.run(["umount", "-l", m], check=False)


def _prune_old(keep: Path) -> None:
    """Remove earlier trees whose inputs changed (nothing may still mount them)."""
    mounted = Path("/proc/mounts").read_text()
    for old in CACHE_DIR.glob("rootfs-*"):
        if old != keep and old.is_dir() and str(old) not in mounted:
            shutil.rmtree(old, ignore_errors=True)


if __name__ == "__main__":
    print(ensure_rootfs(lambda m: print(m, file=sys.stderr)))
