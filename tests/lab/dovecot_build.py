#!/usr/bin/env python3
"""Debian 13's libdovecot-storage rebuilt with the IDLE patch the NixOS module applies.

Dovecot waits 500 ms after a new file lands in a maildir before it tells an IDLEing client
(NOTIFY_DELAY_MSECS in src/lib-storage/mailbox-watch.c); the relay's patch makes that 0.
The constant lives in one library, libdovecot-storage, so the lab does not rebuild and
reinstall the whole source package: it builds Debian's own source (same version, same
Debian patches, same configure flags and build flags) with the relay's patch on top, up to
that library, and places it over the stock one with dpkg-divert.

The build runs in an overlay of the lab's cached Debian 13 root filesystem (the cached
tree is never written) and its result is cached next to that tree, keyed by the patch and
the Debian version of dovecot-core; an unfinished build leaves only a ``.partial``
directory, which never counts and is removed by the next build. Before a result is cached
it is checked: every other Dovecot library the build installed must be byte for byte
Debian's (apart from Debian's link to its debug symbols), and the disassembly must show
the watch's timeout going from 500 to 0.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import rootfs  # noqa: E402
from builds import Clock, run_counted  # noqa: E402

Progress = Callable[[str], None]

PATCH = HERE.parent.parent / "nixos/modules/chatmail/patches/dovecot-no-idle-delay.patch"
CACHE_DIR = rootfs.CACHE_DIR
SOURCE_PACKAGE = "dovecot"
BINARY_PACKAGE = "dovecot-core"
LIB_DIR = "usr/lib/dovecot"
LIB_NAME = "libdovecot-storage.so.0.0.0"
LIBRARY = f"{LIB_DIR}/{LIB_NAME}"
# Where dpkg-divert moves Debian's copy; dpkg writes later versions of the file there too.
DIVERTED = f"{LIBRARY}.debian"
# The source file whose timeout the patch changes, as Dovecot passes it to timeout_add_short.
WATCH_SOURCE = "mailbox-watch.c"
# Bump when the build steps change what they produce.
RECIPE = "1"
# What dh_strip does to a shared library (the debug link is left out: no -dbgsym matches).
STRIP = ["strip", "--remove-section=.comment", "--remove-section=.note", "--strip-unneeded"]
BUILD_USER = "builder"
# Inside the overlay.
BUILD_DIR = "/build"
SRC_DIR = f"{BUILD_DIR}/src"
STAGE = f"{BUILD_DIR}/stage"


def _status_fields(root: Path, package: str) -> dict[str, str]:
    """The dpkg status stanza of an installed package in a root filesystem."""
    text = (root / "var/lib/dpkg/status").read_text()
    for stanza in text.split("\n\n"):
        fields = dict(_deb822(stanza))
        if fields.get("Package") == package and " installed" in fields.get("Status", ""):
            return fields
    raise LookupError(f"{package} is not installed in {root}")


def _deb822(stanza: str) -> list[tuple[str, str]]:
    """Fields of one deb822 stanza, in order; continuation lines stay in the value."""
    fields: list[tuple[str, str]] = []
    for line in stanza.splitlines():
        if line[:1] in (" ", "\t") and fields:
            key, value = fields[-1]
            fields[-1] = (key, value + "\n" + line)
        elif ":" in line:
            key, _, value = line.partition(":")
            fields.append((key, value.strip()))
    return fields


def debian_version(root: Path) -> str:
    """The version of Debian's dovecot source that built the root's dovecot-core."""
    fields = _status_fields(root, BINARY_PACKAGE)
    source = fields.get("Source", SOURCE_PACKAGE)
    m = re.fullmatch(r"\S+ \((\S+)\)", source)
    return m.group(1) if m else fields["Version"]


def cache_key(patch: bytes, version: str) -> str:
    """What the cached library depends on: the patch, Debian's version and the recipe."""
    h = hashlib.sha256()
    for part in (RECIPE.encode(), version.encode(), patch):
        h.update(len(part).to_bytes(8, "big") + part)
    return h.hexdigest()[:16]


def cache_entry(version: str, patch: Path = PATCH, cache_dir: Path = CACHE_DIR) -> Path:
    return cache_dir / f"dovecot-nodelay-{cache_key(patch.read_bytes(), version)}"


def cached_library(version: str, patch: Path = PATCH, cache_dir: Path = CACHE_DIR) -> Path | None:
    """The finished library for this Debian version, or None (a .partial never counts)."""
    entry = cache_entry(version, patch, cache_dir)
    lib = entry / LIB_NAME
    return lib if (entry / ".complete").exists() and lib.exists() else None


def build_log(version: str, cache_dir: Path = CACHE_DIR) -> Path:
    """The log of this Debian version's build, while it runs or after it failed."""
    entry = cache_entry(version, PATCH, cache_dir)
    return entry.with_name(entry.name + ".partial") / "build.log"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ensure_patched_dovecot(progress: Progress = print, base: Path | None = None) -> Path:
    """Path of the cached patched libdovecot-storage for the lab's root filesystem,
    building it first when it is missing (about ten minutes on two cores, once)."""
    base = base or rootfs.ensure_rootfs(progress)
    version = debian_version(base)
    found = cached_library(version)
    if found:
        return found
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    # One build at a time: a second caller waits, then finds the first one's result.
    with (CACHE_DIR / "dovecot-nodelay.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return cached_library(version) or _build_entry(base, version, progress)


def _build_entry(base: Path, version: str, progress: Progress) -> Path:
    entry = cache_entry(version)
    partial = entry.with_name(entry.name + ".partial")
    if partial.exists():
        _umount_below(partial)
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    progress(f"building Dovecot {version}'s libdovecot-storage with {PATCH.name} in {partial}")
    clock = Clock()
    out = partial / "out"
    out.mkdir()
    report = _build(base, version, partial, out, progress, clock)
    report.update(clock.figures())
    (out / "build.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / ".complete").write_text(cache_key(PATCH.read_bytes(), version) + "\n")
    out.rename(entry)
    _umount_below(partial)
    shutil.rmtree(partial)
    _prune_old(entry)
    progress(f"patched libdovecot-storage ready after {report['build_seconds']:.0f} s "
             f"({report['cpu_seconds']:.0f} CPU s): {entry / LIB_NAME}")
    return entry / LIB_NAME


def _build(base: Path, version: str, partial: Path, out: Path, progress: Progress, clock: Clock) -> dict:
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

        def sh(script: str, user: str | None = None, step: str = "") -> str:
            """Run a shell script in the overlay (as the build user if given), logged."""
            cmd = ["chroot"] + ([f"--userspec={user}:{user}"] if user else []) + [str(merged)]
            env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": BUILD_DIR if user else "/root",
                   "LC_ALL": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive",
                   "DEB_BUILD_OPTIONS": "nocheck parallel=2"}
            log.write(f"\n### {step or script}\n")
            log.flush()
            # The step's output goes through a file: the CPU count needs the child's own
            # wait status, which a pipe's reader would not give (see builds.run_counted).
            with tempfile.TemporaryFile() as captured:
                returncode, cpu = run_counted(["nice", "-n", "19", *cmd, "/bin/sh", "-ec", script],
                                              env=env, stdout=captured)
                captured.seek(0)
                output = captured.read().decode(errors="replace")
            clock.add(cpu)
            log.write(output)
            log.flush()
            if returncode != 0:
                tail = "\n".join(output.splitlines()[-30:])
                raise RuntimeError(f"{step or script} failed ({returncode}); "
                                   f"log: {partial}/build.log\n{tail}")
            return output

        mirror, suite = _debian_mirror(merged)
        # Debian's archive lacks some source files that its security archive has (see
        # _fetch_source), so both suites are source entries.
        (merged / "etc/apt/sources.list.d/dovecot-source.list").write_text(
            f"deb-src {mirror} {suite} main\ndeb-src {mirror}-security {suite}-security main\n")
        progress("apt-get update and the build dependencies (about 130 packages)")
        sh("apt-get update -q", step="apt-get update")
        sh(f"apt-get build-dep -y -q --no-install-recommends {SOURCE_PACKAGE}", step="build-dep")
        sh(f"useradd --create-home --home-dir {BUILD_DIR} {BUILD_USER}", step="build user")

        progress(f"fetching the source of {SOURCE_PACKAGE} {version}")
        dsc = _fetch_source(sh, merged, mirror, version)
        shutil.copy(PATCH, merged / BUILD_DIR.lstrip("/") / PATCH.name)
        progress("unpacking, applying the patch, configuring as debian/rules does")
        sh(f"cd {BUILD_DIR} && dpkg-source -x {dsc} src", user=BUILD_USER, step="dpkg-source -x")
        sh(f"cd {SRC_DIR} && patch -p1 --forward < {BUILD_DIR}/{PATCH.name}", user=BUILD_USER, step="patch")
        watch = (merged / SRC_DIR.lstrip("/") / "src/lib-storage" / WATCH_SOURCE).read_text()
        if "#define NOTIFY_DELAY_MSECS 0\n" not in watch:
            raise RuntimeError(f"{PATCH.name} did not set NOTIFY_DELAY_MSECS to 0")
        # dpkg-buildpackage's environment for the steps of `dh build-arch` up to the
        # configure step: debian/rules' overrides, with its exported build flags (LTO,
        # hardening), and the changelog's date for reproducible output.
        sh(f"""cd {SRC_DIR}
            export SOURCE_DATE_EPOCH=$(dpkg-parsechangelog -STimestamp)
            dh_update_autotools_config
            debian/rules override_dh_autoreconf
            debian/rules override_dh_auto_configure
            """, user=BUILD_USER, step="configure")
        subdirs = _subdirs_up_to_storage(sh)
        progress(f"compiling {len(subdirs)} source directories up to lib-storage (nice 19, 2 jobs)")
        # Only what installs: noinst_PROGRAMS in these directories are tests and benchmarks.
        sh(f"""cd {SRC_DIR}
            export SOURCE_DATE_EPOCH=$(dpkg-parsechangelog -STimestamp)
            make dovecot-version.h
            for d in {' '.join(subdirs)}; do make -C src/$d -j2 noinst_PROGRAMS= all; done
            """, user=BUILD_USER, step="make")
        # As debian/rules' `make install`: libtool relinks the libraries for their
        # installed place (the build tree's copies carry the build directory in RUNPATH).
        progress("installing those directories into a staging tree (relinks as Debian's install does)")
        sh(f"""cd {SRC_DIR}
            export SOURCE_DATE_EPOCH=$(dpkg-parsechangelog -STimestamp)
            for d in {' '.join(subdirs)}; do make -C src/$d noinst_PROGRAMS= install DESTDIR={STAGE}; done
            """, user=BUILD_USER, step="install")
        return _collect(merged, base, out, progress)
    finally:
        log.close()
        _umount_below(merged)
        subprocess.run(["umount", str(merged)], check=False)


def _debian_mirror(root: Path) -> tuple[str, str]:
    """The archive and suite the root filesystem was bootstrapped from."""
    for line in (root / "etc/apt/sources.list").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "deb" and not parts[1].startswith("["):
            return parts[1].rstrip("/"), parts[2]
    raise RuntimeError(f"no deb line in {root}/etc/apt/sources.list")


def _fetch_source(sh: Callable[..., str], merged: Path, mirror: str, version: str) -> str:
    """Download the source package into the build directory; return the .dsc's name.

    `apt-get source` fails here: the archive lacks this version's .dsc and .debian.tar.xz
    (the security archive has the .debian.tar.xz, neither has the .dsc). So each file is
    fetched with apt's own downloader from the first place that has it, checked against
    the Sources index, and a missing .dsc is rebuilt from the index stanza, which
    dpkg-source accepts (unsigned, every checksum verified)."""
    index = sh(f"apt-cache showsrc {SOURCE_PACKAGE}", step="showsrc")
    stanzas = [dict(_deb822(s)) for s in index.split("\n\n")]
    stanzas = [s for s in stanzas if s.get("Package") == SOURCE_PACKAGE and s.get("Version") == version]
    if not stanzas:
        raise RuntimeError(f"no source stanza for {SOURCE_PACKAGE} {version} in the Sources indexes")
    files: dict[str, str] = {}
    for s in stanzas:
        for line in s.get("Checksums-Sha256", "").splitlines():
            if line.strip():
                digest, _size, name = line.split()
                files[name] = digest
    places = [f"{root}/{s['Directory']}" for s in stanzas for root in (mirror, f"{mirror}-security")]
    dsc = next(name for name in files if name.endswith(".dsc"))
    for name, digest in files.items():
        got = False
        for place in places:
            try:
                sh(f"cd {BUILD_DIR} && /usr/lib/apt/apt-helper download-file "
                   f"'{place}/{name}' '{name}' SHA256:{digest}",
                   user=BUILD_USER, step=f"download {name} from {place}")
                got = True
                break
            except RuntimeError:
                continue
        if not got and name != dsc:
            raise RuntimeError(f"{name} is in the Sources index but in neither archive")
        if not got:
            with_files = next((s for s in stanzas if "Files" in s), stanzas[0])
            path = merged / BUILD_DIR.lstrip("/") / dsc
            path.write_text(_dsc_from_stanza(with_files, dsc))
            os.chown(path, *_ids(merged, BUILD_USER))
    return dsc


def _dsc_from_stanza(stanza: dict[str, str], dsc: str) -> str:
    """A .dsc with the fields of a Sources stanza: Package becomes Source, the index's own
    fields go, and the file lists leave out the .dsc itself."""
    drop = {"Directory", "Priority", "Section", "Package"}
    lines = [f"Source: {stanza['Package']}"]
    for key, value in stanza.items():
        if key in drop:
            continue
        if key in ("Files", "Checksums-Sha1", "Checksums-Sha256"):
            value = "\n".join(line for line in value.splitlines() if not line.endswith(" " + dsc))
        lines.append(f"{key}: {value}")
    return "\n".join(lines) + "\n"


def _ids(root: Path, user: str) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise LookupError(user)


def _subdirs_up_to_storage(sh: Callable[..., str]) -> list[str]:
    """The configured SUBDIRS of src/ (Lua and LDAP as configured), in build order, up to
    and including lib-storage: everything libdovecot-storage links with."""
    out = sh(f"cd {SRC_DIR}/src && make -s --no-print-directory "
             "--eval 'print-subdirs: ; @echo $(SUBDIRS)' print-subdirs", user=BUILD_USER, step="SUBDIRS")
    subdirs = out.split()
    if "lib-storage" not in subdirs:
        raise RuntimeError(f"lib-storage is not among src/'s SUBDIRS: {out!r}")
    return subdirs[: subdirs.index("lib-storage") + 1]


def _collect(merged: Path, base: Path, out: Path, progress: Progress) -> dict:
    """Strip the installed libraries as Debian does and compare them with Debian's: all
    but libdovecot-storage must be byte for byte the same (Debian's debug link aside), and
    in that one the watch's timeout must have gone from 500 to 0. Keep it."""
    progress("comparing the libraries with Debian's")
    staged = merged / STAGE.lstrip("/") / LIB_DIR
    compare = out / "compare"
    compare.mkdir()
    same: list[str] = []
    differ: list[str] = []
    for built in sorted(staged.glob("libdovecot*.so.0.0.0")):
        stock = base / LIB_DIR / built.name
        if not stock.exists():
            continue
        mine, theirs = compare / built.name, compare / (built.name + ".debian")
        shutil.copy(built, mine)
        _run([*STRIP, str(mine)])
        _run(["objcopy", "--remove-section=.gnu_debuglink", "--remove-section=.gnu_debugaltlink",
              str(stock), str(theirs)])
        (same if mine.read_bytes() == theirs.read_bytes() else differ).append(built.name)
    if differ != [LIB_NAME] or not same:
        raise RuntimeError(f"expected only {LIB_NAME} to differ from Debian's; "
                           f"differing: {differ}, same: {same}")
    patched = out / LIB_NAME
    mine, theirs = compare / LIB_NAME, compare / (LIB_NAME + ".debian")
    text_mine, text_theirs = _section(mine, ".text"), _section(theirs, ".text")
    changed = sum(a != b for a, b in zip(text_mine, text_theirs)) + abs(len(text_mine) - len(text_theirs))
    mine.rename(patched)
    shutil.rmtree(compare)
    stock_delays = watch_delays(base / LIBRARY)
    patched_delays = watch_delays(patched)
    if stock_delays != [500] or patched_delays != [0]:
        raise RuntimeError(f"timeouts set from {WATCH_SOURCE}: "
                           f"Debian's {stock_delays}, ours {patched_delays}")
    progress(f"byte for byte Debian's: {', '.join(same)}; {LIB_NAME}: {changed} bytes of code differ, "
             f"{WATCH_SOURCE}'s timeout 500 -> 0 ms")
    return {
        "debian_version": debian_version(base),
        "patch_sha256": sha256(PATCH),
        "stock_sha256": sha256(base / LIBRARY),
        "patched_sha256": sha256(patched),
        "identical_to_debian": same,
        "text_bytes_changed": changed,
        "watch_timeout_msecs": {"debian": stock_delays[0], "patched": patched_delays[0]},
    }


def _readelf_sections(lib: Path) -> str:
    r = subprocess.run(["readelf", "-S", "-W", str(lib)], check=True, capture_output=True, text=True)
    return r.stdout


def _section(lib: Path, name: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        dump = Path(tmp) / "section"
        _run(["objcopy", "-O", "binary", f"--only-section={name}", str(lib), str(dump)])
        return dump.read_bytes()


def watch_delays(lib: Path) -> list[int]:
    """The millisecond timeouts that code from mailbox-watch.c passes to timeout_add_short,
    read from the disassembly: Debian's library has [500], the patched one [0]."""
    rodata = _rodata(lib)
    asm = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(lib)], check=True, capture_output=True,
                         text=True).stdout.splitlines()
    return delays_in_disassembly(asm, lambda addr: _string_at(rodata, addr))


def delays_in_disassembly(asm: list[str], string_at: Callable[[int], str | None]) -> list[int]:
    """Dovecot's timeout_add_short macro passes (msecs, __FILE__, __LINE__, callback,
    context), so on x86-64 each call from the watch code loads the msecs into %edi and the
    address of the file name into %rsi shortly before the call."""
    delays = []
    for i, line in enumerate(asm):
        if not re.search(r"call\s+\S+ <timeout_add_short(@plt)?>", line):
            continue
        msecs, source = None, None
        for prev in reversed(asm[max(0, i - 8):i]):
            if re.search(r"\scall\s", prev):
                break
            if source is None and (m := re.search(r"lea\s+\S+\(%rip\),%rsi\s+# ([0-9a-f]+)", prev)):
                source = string_at(int(m.group(1), 16))
            if msecs is None and (m := re.search(r"mov\s+\$0x([0-9a-f]+),%edi", prev)):
                msecs = int(m.group(1), 16)
            if msecs is None and re.search(r"xor\s+%edi,%edi", prev):
                msecs = 0
        if source is not None and source.endswith(WATCH_SOURCE) and msecs is not None:
            delays.append(msecs)
    return delays


def _rodata(lib: Path) -> tuple[int, bytes]:
    for m in re.finditer(r"^\s*\[\s*\d+\]\s+(\S+)\s+\S+\s+([0-9a-f]+)", _readelf_sections(lib), re.M):
        if m.group(1) == ".rodata":
            return int(m.group(2), 16), _section(lib, ".rodata")
    raise RuntimeError(f"{lib} has no .rodata")


def _string_at(rodata: tuple[int, bytes], addr: int) -> str | None:
    start, data = rodata
    if not start <= addr < start + len(data):
        return None
    end = data.find(b"\0", addr - start)
    return data[addr - start:end].decode(errors="replace")


def install_into(root: Path, library: Path | None = None) -> None:
    """Place the patched library over Debian's in a relay's root filesystem, the way a
    local administrator does it: dpkg-divert moves Debian's file aside (dpkg then puts
    later versions of it there too), and ours takes its place.

    Refuses a root whose dovecot-core is not the version the library was built from, since
    Dovecot's libraries must match each other exactly."""
    version = debian_version(root)
    library = library or cached_library(version)
    if library is None:
        raise FileNotFoundError(f"no patched libdovecot-storage for {version} in {CACHE_DIR}; run {__file__}")
    report = json.loads((library.parent / "build.json").read_text())
    if report["debian_version"] != version:
        raise RuntimeError(f"{library} is built from {report['debian_version']}, {root} has {version}")
    target = root / LIBRARY
    if not (root / DIVERTED).exists():
        _run(["chroot", str(root), "dpkg-divert", "--quiet", "--local", "--rename",
              "--divert", f"/{DIVERTED}", "--add", f"/{LIBRARY}"])
    tmp = target.with_name(target.name + ".new")
    shutil.copy(library, tmp)
    os.chmod(tmp, 0o644)
    tmp.replace(target)


def _run(cmd: list[str], **kw) -> None:
    subprocess.run(cmd, check=True, **kw)


def _umount_below(path: Path) -> None:
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for m in sorted((m for m in mounts if m.startswith(str(path) + "/")), reverse=True):
        subprocess.run(["umount", "-l", m], check=False)


def _prune_old(keep: Path) -> None:
    """Remove results for an older patch or Debian version."""
    for old in CACHE_DIR.glob("dovecot-nodelay-*"):
        if old != keep and old.is_dir() and not old.name.endswith(".partial"):
            shutil.rmtree(old, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=(
        "Builds once (about ten minutes on two cores) and prints the cached library's path; "
        "later runs only print it."))
    parser.add_argument("--rootfs", type=Path, help="Debian 13 root filesystem to build for "
                        "(default: the lab's cached one, built first if missing)")
    parser.add_argument("--install-into", type=Path, metavar="ROOT",
                        help="also place the library into this root filesystem (dpkg-divert)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root (overlay mount, chroot)")

    def progress(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    lib = ensure_patched_dovecot(progress, args.rootfs)
    if args.install_into:
        install_into(args.install_into, lib)
        progress(f"installed into {args.install_into}")
    print(lib)


if __name__ == "__main__":
    main()
