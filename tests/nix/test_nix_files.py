"""Nix checks that need no nixpkgs: every file parses, the pure configuration evaluates,
the lab's view of it agrees with chatmaild, and flake.lock pins the verified revisions."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "nixos/modules/chatmail/config"
NIX_FILES = sorted(p for p in ROOT.rglob("*.nix") if ".git" not in p.parts)


def nix_eval(expr_file: Path, *args: str) -> object:
    out = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", str(expr_file), *args],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)


def test_the_project_has_nix_files_to_check():
    names = {p.relative_to(ROOT).as_posix() for p in NIX_FILES}
    assert {"flake.nix", "nixos/modules/chatmail.nix", "tests/vm/federation.nix"} <= names


@pytest.mark.parametrize("path", NIX_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_nix_file_parses(path):
    r = subprocess.run(["nix-instantiate", "--parse", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_pure_config_files_use_builtins_only():
    for path in CONFIG.glob("*.nix"):
        text = path.read_text()
        assert "pkgs." not in text and "lib." not in text, f"{path.name} must not need nixpkgs"


@pytest.fixture(scope="module")
def relay():
    return nix_eval(ROOT / "tests/lab/relay.nix", "--argstr", "domain", "relay1.test")


def test_relay_configuration_evaluates_to_json(relay):
    assert relay["postfix"]["main"]["myhostname"] == "relay1.test"
    assert relay["postfix"]["master"]["smtp_inet"]["name"] == "smtp"
    assert set(relay["postfix"]["maps"]) >= {"login_map", "submission_header_cleanup", "lmtp_header_cleanup"}


def test_dovecot_conf_starts_with_the_version_settings_dovecot_2_4_requires(relay):
    lines = [line for line in relay["dovecotConf"].splitlines() if line.strip()]
    assert lines[0].startswith("dovecot_config_version = 2.4")
    assert lines[1].startswith("dovecot_storage_version = 2.4")
    assert "passdb lua {" in relay["dovecotConf"]


def test_submission_passes_the_outgoing_filter_and_port_25_the_incoming_one(relay):
    master = relay["postfix"]["master"]
    settings = relay["settings"]
    assert f"smtpd_proxy_filter=127.0.0.1:{settings['filtermail_smtp_port']}" in master["submission"]["args"]
    assert f"smtpd_proxy_filter=127.0.0.1:{settings['filtermail_smtp_port_incoming']}" in master["smtp_inet"]["args"]


def test_rendered_chatmail_ini_reads_back_with_chatmaild_defaults(relay, tmp_path):
    from chatmaild.config import read_config

    ini = tmp_path / "chatmail.ini"
    ini.write_text(relay["chatmailIni"])
    config = read_config(ini)
    defaults = nix_eval(CONFIG / "defaults.nix")
    assert config.mail_domain == "relay1.test"
    for key in defaults:
        value = relay["settings"][key]  # the defaults, and what the lab sets as NixOS does
        got = getattr(config, key)
        got = str(got) if isinstance(got, Path) else got
        assert got == value, f"{key}: Nix default {value!r}, chatmaild read {got!r}"


def test_flake_lock_pins_the_verified_revisions():
    lock = json.loads((ROOT / "flake.lock").read_text())
    nodes = lock["nodes"]
    nixpkgs = nodes[nodes["root"]["inputs"]["nixpkgs"]]["locked"]
    assert nixpkgs["rev"] == "b18a4b905f8d028dc4476412e6d6891728695379"
    assert nixpkgs["narHash"] == "sha256-gwrPcFf/rDjHPaVflbDZ040ZDmBTRj/7+s8ZmE2SaIM="
    assert nixpkgs["lastModified"] == 1787101114
    p2n = nodes[nodes["root"]["inputs"]["poetry2nix"]]["locked"]
    assert p2n["rev"] == "ce2369db77f45688172384bbeb962bc6c2ea6f94"
    assert p2n["narHash"] == "sha256-cX98bUuKuihOaRp8dNV1Mq7u6/CQZWTPth2IJPATBXc="
    for name, node in nodes.items():
        if name != "root" and "locked" in node:
            assert node["locked"].get("narHash", "").startswith("sha256-"), name
