#!/usr/bin/env python3
"""The iroh relay server (`iroh-relay`) that each lab relay runs, built once and cached.

Delta Chat's realtime channels (webxdc) connect two cores over iroh; when the cores cannot
reach each other directly, their traffic goes through an iroh relay, and a chatmail relay
runs one and advertises it in IMAP METADATA. The relay protocol changed incompatibly
between iroh 0.x and 1.x, so the relay must be built in the version the cores speak, which
is neither Debian's (it has none) nor necessarily the newest on the crate registry.

The build runs with Debian 13's own Rust toolchain in an overlay of the lab's cached Debian
13 root filesystem (the cached tree is never written), so it needs nothing on the machine
but root, and the binary links against the very C library the relays run. It uses the
lock file published with the crate (`cargo install --locked`), so the same dependency
versions are built every time, and the binary comes out byte for byte the same. The result
is cached next to the root filesystem under the version and a stamp of the recipe; an
unfinished build leaves only a ``.partial`` directory, which never counts and is removed
by the next build.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import rootfs  # noqa: E402
from builds import Clock, run_counted  # noqa: E402

Progress = Callable[[str], None]

CACHE_DIR = rootfs.CACHE_DIR
# The one place the version is written down: the lab builds it, the NixOS package reads it.
VERSIONS_FILE = HERE.parent.parent / "nixos/pkgs/iroh-relay/version.json"
CRATE = "iroh-relay"
BINARY = "iroh-relay"
# Bump when the build steps change what they produce.
RECIPE = "2"
# The lab's relay forwards a handful of realtime messages per test, so the binary's speed
# does not matter, while its build sits on every empty-cache CI run. So: cargo's release
# profile without optimisation (the level of cargo's dev profile, in which iroh's own tests
# start their relay servers), without link-time optimisation or debug information. The
# rest of the release profile stays (no debug assertions or overflow checks, as in the
# deployed binary), and so do the crate's code, lock file and features. Measured on two
# shared cores: 314 CPU seconds (273 s) instead of the optimised build's 940 (757 s, and up
# to 1476 s on a busier machine), for a 24 MB binary instead of 12 MB.
# Given as environment variables: `cargo install` builds the registry's crate, with no
# manifest of ours to hold a profile.
PROFILE = {
    "CARGO_PROFILE_RELEASE_OPT_LEVEL": "0",
    "CARGO_PROFILE_RELEASE_CODEGEN_UNITS": "16",
    "CARGO_PROFILE_RELEASE_LTO": "off",
    "CARGO_PROFILE_RELEASE_DEBUG": "0",
    "CARGO_PROFILE_RELEASE_INCREMENTAL": "false",
}
# Debian 13's Rust toolchain, the C compiler that ring's build script needs, and strip.
BUILD_PACKAGES = ["cargo", "rustc", "gcc", "libc6-dev", "binutils", "ca-certificates"]
BUILD_USER = "builder"
BUILD_DIR = "/build"


def pinned() -> dict[str, str]:
    """The crate version and cargo features every build of the relay uses."""
    return json.loads(VERSIONS_FILE.read_text())


def cache_entry(version: str, features: list[str], cache_dir: Path = CACHE_DIR) -> Path:
    """Where one recipe's binary is cached: the name carries the stamp, so a lab on another
    recipe (another branch, say) keeps its own entry instead of rebuilding over this one.
    Entries of other recipes are not removed: a lab on that recipe may be about to copy
    its binary, and an entry holds one binary of 24 MB."""
    return cache_dir / f"{CRATE}-{version}-{_stamp(version, features)}"


def build_log(cache_dir: Path = CACHE_DIR) -> Path:
    """The log of the pinned version's build, while it runs or after it failed."""
    pin = pinned()
    entry = cache_entry(pin["version"], pin["features"], cache_dir)
    return entry.with_name(entry.name + ".partial") / "build.log"


def _stamp(version: str, features: list[str], recipe: str = RECIPE,
           profile: dict[str, str] = PROFILE) -> str:
    """What the cached binary depends on, in its entry's name and its .complete marker."""
    h = hashlib.sha256(json.dumps([recipe, version, sorted(features), sorted(profile.items())]).encode())
    return h.hexdigest()[:16]


def cached_binary(cache_dir: Path = CACHE_DIR) -> Path | None:
    """The finished binary for the pinned version, or None (a .partial never counts, and
    neither does one built by other steps, features or profile)."""
    pin = pinned()
    entry = cache_entry(pin["version"], pin["features"], cache_dir)
    marker, binary = entry / ".complete", entry / "bin" / BINARY
    if marker.exists() and binary.exists() and marker.read_text().strip() == _stamp(pin["version"], pin["features"]):
        return binary
    return None


def ensure_iroh_relay(progress: Progress = print, base: Path | None = None) -> Path:
    """Path of the cached iroh-relay binary, building it first when it is missing
    (about 5 minutes and 320 CPU seconds on two cores, once; 9 minutes beside the Dovecot
    build on a busy machine)."""
    found = cached_binary()
    if found:
        return found
    base = base or rootfs.ensure_rootfs(progress)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    # One build at a time: a second caller waits, then finds the first one's result.
    with (CACHE_DIR / f"{CRATE}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return cached_binary() or _build_entry(base, progress)


def _build_entry(base: Path, progress: Progress) -> Path:
    pin = pinned()
    version, features = pin["version"], pin["features"]
    entry = cache_entry(version, features)
    partial = entry.with_name(entry.name + ".partial")
    if partial.exists():
        _umount_below(partial)
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    progress(f"building {CRATE} {version} (features {', '.join(features)}) in {partial}")
    clock = Clock()
    out = partial / "out"
    report = _build(base, version, features, partial, out, progress, clock)
    report.update(clock.figures())
    (out / "build.json").write_text(json.dumps(report, indent=2) + "\n")
    shutil.copy(partial / "build.log", out / "build.log")
    (out / ".complete").write_text(_stamp(version, features) + "\n")
    if entry.exists():
        shutil.rmtree(entry)
    out.rename(entry)
    _umount_below(partial)
    shutil.rmtree(partial)
    progress(f"{CRATE} {version} ready after {report['build_seconds']:.0f} s "
             f"({report['cpu_seconds']:.0f} CPU s): {entry / 'bin' / BINARY}")
    return entry / "bin" / BINARY


def _build(base: Path, version: str, features: list[str], partial: Path, out: Path,
           progress: Progress, clock: Clock) -> dict:
    ov = partial / "overlay"
    upper, work, merged = ov / "upper", ov / "work", ov / "merged"
    for d in (upper, work, merged):
        d.mkdir(parents=True)
    log = (partial / "build.log").open("w")
    _run(["mount", "-t", "overlay", "overlay", "-o",
          f"lowerdir={base},upperdir={upper},workdir={work}", str(merged)])
    try:
        _run(["mount", "-t", "proc", "proc", str(merged / "proc")])
        _run(["mount", "--bind", "/dev", str(merged / "dev")])
        shutil.copy("/etc/resolv.conf", merged / "etc/resolv.conf")
        # cargo inside the tree trusts what this machine trusts for reaching the registry.
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", merged / "etc/host-ca.crt")

        def sh(script: str, user: str | None = None, step: str = "") -> str:
            """Run a shell script in the overlay (as the build user if given), logged."""
            cmd = ["chroot"] + ([f"--userspec={user}:{user}"] if user else []) + [str(merged)]
            env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": BUILD_DIR if user else "/root",
                   "LC_ALL": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive",
                   "CARGO_HOME": f"{BUILD_DIR}/cargo", "CARGO_BUILD_JOBS": "2",
                   "CARGO_HTTP_CAINFO": "/etc/host-ca.crt", "CARGO_TERM_COLOR": "never",
                   "CARGO_TERM_PROGRESS_WHEN": "never", **PROFILE}
            log.write(f"\n### {step or script}\n")
            log.flush()
            returncode, cpu = run_counted(["nice", "-n", "19", *cmd, "/bin/sh", "-ec", script],
                                          env=env, stdout=log)
            clock.add(cpu)
            log.flush()
            if returncode != 0:
                log.close()
                tail = "\n".join((partial / "build.log").read_text().splitlines()[-30:])
                raise RuntimeError(f"{step or script} failed ({returncode}); "
                                   f"log: {partial}/build.log\n{tail}")
            return ""

        progress(f"installing Debian's Rust toolchain into the overlay ({' '.join(BUILD_PACKAGES)})")
        sh("apt-get update -q", step="apt-get update")
        sh(f"apt-get install -y -q --no-install-recommends {' '.join(BUILD_PACKAGES)}", step="toolchain")
        sh(f"useradd --create-home --home-dir {BUILD_DIR} {BUILD_USER}", step="build user")
        rustc = subprocess.run(["chroot", str(merged), "rustc", "--version"], check=True,
                               capture_output=True, text=True).stdout.strip()
        progress(f"cargo install {CRATE} {version} --locked with {rustc} (nice 19, 2 jobs, "
                 f"opt-level {PROFILE['CARGO_PROFILE_RELEASE_OPT_LEVEL']}; "
                 f"log: {partial}/build.log)")
        sh(f"cargo install {CRATE} --version ={version} --locked "
           f"--features {','.join(features)} --bin {BINARY} --root {BUILD_DIR}/out",
           user=BUILD_USER, step="cargo install")
        # strip from the overlay's binutils (the C compiler brought them): the machine
        # itself needs none.
        sh(f"strip {BUILD_DIR}/out/bin/{BINARY}", user=BUILD_USER, step="strip")
        built = merged / BUILD_DIR.lstrip("/") / "out/bin" / BINARY
        (out / "bin").mkdir(parents=True)
        shutil.copy(built, out / "bin" / BINARY)
        os.chmod(out / "bin" / BINARY, 0o755)
        says = subprocess.run(["chroot", str(merged), f"{BUILD_DIR}/out/bin/{BINARY}", "--version"],
                              capture_output=True, text=True).stdout.strip()
        if version not in says:
            raise RuntimeError(f"the built {BINARY} says {says!r}, expected version {version}")
        return {
            "crate": CRATE,
            "version": version,
            "features": features,
            "rustc": rustc,
            "profile": PROFILE,
            "says": says,
            "sha256": hashlib.sha256((out / "bin" / BINARY).read_bytes()).hexdigest(),
        }
    finally:
        if not log.closed:
            log.close()
        _umount_below(merged)
        subprocess.run(["umount", str(merged)], check=False)


def install_into(root: Path, binary: Path | None = None) -> Path:
    """Copy the cached binary into a relay's root filesystem, where its unit expects it."""
    binary = binary or cached_binary()
    if binary is None:
        raise FileNotFoundError(f"no {CRATE} {pinned()['version']} in {CACHE_DIR}; run {__file__}")
    target = root / "usr/local/bin" / BINARY
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".new")
    shutil.copy(binary, tmp)
    os.chmod(tmp, 0o755)
    tmp.replace(target)
    return target


def _run(cmd: list[str], **kw) -> None:
    subprocess.run(cmd, check=True, **kw)


def _umount_below(path: Path) -> None:
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for m in sorted((m for m in mounts if m.startswith(str(path) + "/")), reverse=True):
        subprocess.run(["umount", "-l", m], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=(
        "Builds once (about 5 minutes on two cores) and prints the cached binary's path; "
        "later runs only print it."))
    parser.add_argument("--rootfs", type=Path, help="Debian 13 root filesystem to build in "
                        "(default: the lab's cached one, built first if missing)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root (overlay mount, chroot)")

    def progress(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    print(ensure_iroh_relay(progress, args.rootfs))


if __name__ == "__main__":
    main()
