"""The Dovecot patch that removes the 500 ms IDLE notification delay, without nixpkgs or the
lab: the patch itself, the module's use of it, and the lab build's cache and checks."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "nixos/modules/chatmail"
PATCH = MODULE / "patches/dovecot-no-idle-delay.patch"
TARGET = "src/lib-storage/mailbox-watch.c"

sys.path.insert(0, str(ROOT / "tests/lab"))
import dovecot_build  # noqa: E402


def hunks(text: str) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The files a unified diff names (after a/ and b/) and its hunks (header, body)."""
    files = re.findall(r"^(?:---|\+\+\+) [ab]/(\S+)$", text, re.M)
    found: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("@@"):
            found.append((line, []))
        elif found and line[:1] in (" ", "-", "+"):
            found[-1][1].append(line)
    return files, found


def test_the_patch_changes_only_the_idle_notification_delay_to_zero():
    files, [(header, body)] = hunks(PATCH.read_text())
    assert files == [TARGET, TARGET]
    assert [line for line in body if line[0] == "-"] == ["-#define NOTIFY_DELAY_MSECS 500"]
    assert [line for line in body if line[0] == "+"] == ["+#define NOTIFY_DELAY_MSECS 0"]
    counts = re.match(r"@@ -(\d+),(\d+) \+(\d+),(\d+) @@", header)
    old_start, old_len, new_start, new_len = map(int, counts.groups())
    assert old_len == sum(line[0] != "+" for line in body)
    assert new_len == sum(line[0] != "-" for line in body)
    assert old_start == new_start


def test_the_patch_applies_cleanly_to_the_text_its_hunk_was_made_from(tmp_path):
    _files, [(_header, body)] = hunks(PATCH.read_text())
    before = "".join(line[1:] + "\n" for line in body if line[0] != "+")
    after = "".join(line[1:] + "\n" for line in body if line[0] != "-")
    target = tmp_path / TARGET
    target.parent.mkdir(parents=True)
    target.write_text(before)
    r = subprocess.run(["patch", "-p1", "--forward", "--fuzz=0", "-i", str(PATCH)], cwd=tmp_path,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert target.read_text() == after


# Just what dovecot.nix and the files it imports need from lib and pkgs; the package
# records the patches it ends up with.
STUB_LIB = "{ mkIf = cond: value: value; mkDefault = value: value; getExe' = pkg: name: name; }"
STUB_PKGS = """{
  writeText = name: text: text;
  dovecot = {
    override = args: {
      withLua = args.withLua;
      patches = [ "nixpkgs-own.patch" ];
      overrideAttrs = f: {
        withLua = args.withLua;
        patches = (f { patches = [ "nixpkgs-own.patch" ]; }).patches;
      };
    };
  };
}"""


def dovecot_package(instant_idle: bool) -> dict:
    expr = f"""
      let
        config.services.chatmail = {{
          enable = true;
          dovecot.instantIdle = {str(instant_idle).lower()};
        }};
        module = import {MODULE}/dovecot.nix {{ inherit config; lib = {STUB_LIB}; pkgs = {STUB_PKGS}; }};
        pkg = module.config.services.dovecot2.package;
      in {{
        inherit (pkg) withLua;
        patches = map (p: if builtins.isPath p then baseNameOf p else p) pkg.patches;
      }}
    """
    out = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def test_the_module_builds_dovecot_with_lua_and_the_patch_after_nixpkgs_own():
    assert dovecot_package(True) == {"withLua": True, "patches": ["nixpkgs-own.patch", PATCH.name]}


def test_without_instant_idle_the_module_leaves_nixpkgs_dovecot_unpatched():
    assert dovecot_package(False) == {"withLua": True, "patches": ["nixpkgs-own.patch"]}


def test_the_option_is_on_by_default_and_says_what_it_trades():
    text = (ROOT / "nixos/modules/chatmail.nix").read_text()
    block = text[text.index("dovecot.instantIdle = mkOption {"):]
    block = block[: block.index("};") + 2]
    assert "type = types.bool;" in block and "default = true;" in block
    assert "binary cache" in block and "faster" in block


# The lab's rebuild of Debian's library.

def test_the_lab_cache_key_follows_the_patch_and_the_debian_version():
    key = dovecot_build.cache_key(b"patch", "1:2.4.1+dfsg1-6+deb13u7")
    assert key == dovecot_build.cache_key(b"patch", "1:2.4.1+dfsg1-6+deb13u7")
    assert key != dovecot_build.cache_key(b"patch ", "1:2.4.1+dfsg1-6+deb13u7")
    assert key != dovecot_build.cache_key(b"patch", "1:2.4.1+dfsg1-6+deb13u8")


def test_a_half_built_library_never_counts_as_cached(tmp_path):
    version = "1:2.4.1+dfsg1-6+deb13u7"
    entry = dovecot_build.cache_entry(version, PATCH, tmp_path)
    partial = entry.with_name(entry.name + ".partial") / "out"
    partial.mkdir(parents=True)
    (partial / dovecot_build.LIB_NAME).write_bytes(b"\x7fELF")
    assert dovecot_build.cached_library(version, PATCH, tmp_path) is None
    entry.mkdir()
    (entry / dovecot_build.LIB_NAME).write_bytes(b"\x7fELF")
    assert dovecot_build.cached_library(version, PATCH, tmp_path) is None, "no .complete marker yet"
    (entry / ".complete").write_text("done\n")
    assert dovecot_build.cached_library(version, PATCH, tmp_path) == entry / dovecot_build.LIB_NAME


def test_the_debian_version_is_the_source_version_dpkg_recorded(tmp_path):
    status = tmp_path / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text(
        "Package: dovecot-imapd\nStatus: install ok installed\nVersion: 1:2.4.1+dfsg1-6+deb13u7\n\n"
        "Package: dovecot-core\nStatus: install ok installed\nSource: dovecot (1:2.4.1+dfsg1-6+deb13u7)\n"
        "Version: 1:2.4.1+dfsg1-6+deb13u7+b1\nDescription: x\n more\n\n")
    assert dovecot_build.debian_version(tmp_path) == "1:2.4.1+dfsg1-6+deb13u7"


def test_a_dsc_rebuilt_from_the_sources_index_lists_every_file_but_itself():
    stanza = dict(dovecot_build._deb822(
        "Package: dovecot\nBinary: dovecot-core\nVersion: 1:2.4.1\nFormat: 3.0 (quilt)\nFiles:\n"
        " aa 10 dovecot_2.4.1.dsc\n bb 20 dovecot_2.4.1.orig.tar.gz\nChecksums-Sha256:\n"
        " cc 10 dovecot_2.4.1.dsc\n dd 20 dovecot_2.4.1.orig.tar.gz\nDirectory: pool/main/d/dovecot\n"
        "Priority: optional\nSection: mail"))
    dsc = dovecot_build._dsc_from_stanza(stanza, "dovecot_2.4.1.dsc")
    assert dsc.startswith("Source: dovecot\n")
    assert "dovecot_2.4.1.dsc" not in dsc and "Directory" not in dsc and "Package:" not in dsc
    assert " dd 20 dovecot_2.4.1.orig.tar.gz" in dsc and " bb 20 dovecot_2.4.1.orig.tar.gz" in dsc


DISASSEMBLY = """\
   783ca:	mov    $0x34,%edx
   783cf:	{load}
   783d4:	lea    0xace1e(%rip),%rsi        # 1251f9 <imap_msgpart_url_parse@@Base+0x7279>
   783db:	call   3ff40 <timeout_add_short@plt>
   c801a:	mov    $0x376,%edx
   c801f:	mov    $0x1f4,%edi
   c8024:	lea    0x60e0d(%rip),%rsi        # 128e38 <imap_msgpart_url_parse@@Base+0xaeb8>
   c802b:	call   3ff40 <timeout_add_short@plt>
"""
STRINGS = {0x1251F9: "mailbox-watch.c", 0x128E38: "mailbox-list-index-notify.c"}


@pytest.mark.parametrize(("load", "msecs"), [("mov    $0x1f4,%edi", 500), ("xor    %edi,%edi", 0)])
def test_the_check_reads_the_watch_timeout_and_ignores_the_other_files_timeouts(load, msecs):
    asm = DISASSEMBLY.format(load=load).splitlines()
    assert dovecot_build.delays_in_disassembly(asm, STRINGS.get) == [msecs]
