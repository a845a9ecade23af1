"""The NixOS side of the chatmail.ini contract, evaluated without nixpkgs: the module's files
that only need a few `lib` functions are called with a stand-in for them, so a fact the module
writes in two places shows up as two different values."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from chatmaild.config import read_config
from chatmaild.newemail import new_credentials

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "nixos/modules/chatmail"

# Just the lib functions users.nix and common.nix's paths need.
STUB_LIB = """{
  mkIf = cond: value: value;
  getExe' = pkg: name: "/run/current-system/sw/bin/${name}";
  optional = cond: x: if cond then [ x ] else [ ];
}"""
STUB_PKGS = "{ writeText = name: text: text; }"


def evaluate(options: dict, settings: dict) -> dict:
    """users.nix and common.nix for a relay with these services.chatmail options; `settings`
    stands for the merged services.chatmail.settings."""
    cfg = {
        "enable": True,
        "domain": "chat.example.org",
        "newAccounts": True,
        "tls": {"mode": "acme", "certificateFile": None, "keyFile": None},
        "dkim": {"enable": True, "selector": "opendkim", "keyFile": None},
        "turn": {"enable": True, "secretFile": "/var/lib/chatmail-turn/secret"},
        "package": None,
        **options,
    }
    defaults = f"(import {MODULE}/config/defaults.nix).settings"
    expr = f"""
      let
        cfg = builtins.fromJSON {json.dumps(json.dumps(cfg))};
        config = {{
          services.chatmail = cfg // {{
            settings = {defaults} // {{ mail_domain = cfg.domain; }} // builtins.fromJSON {json.dumps(json.dumps(settings))};
          }};
          services.opendkim.keyPath = "/var/lib/opendkim/keys";
          services.nginx.defaultSSLListenPort = 8443;
        }};
        args = {{ inherit config; lib = {STUB_LIB}; pkgs = {STUB_PKGS}; }};
        common = import {MODULE}/common.nix args;
      in {{
        tmpfiles = (import {MODULE}/users.nix args).config.systemd.tmpfiles.rules;
        chatmailIni = common.chatmailIni;
      }}
    """
    out = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def read_ini(text: str, tmp_path: Path):
    path = tmp_path / "chatmail.ini"
    path.write_text(text)
    return read_config(path)


@pytest.mark.parametrize("new_accounts", [True, False])
def test_the_kill_switch_file_is_the_one_chatmail_ini_names(tmp_path, new_accounts):
    # Even where an operator's settings name another file, the switch and doveauth agree.
    out = evaluate({"newAccounts": new_accounts}, {"nocreate_file": "/var/lib/elsewhere/nocreate"})
    config = read_ini(out["chatmailIni"], tmp_path)
    [rule] = [r for r in out["tmpfiles"] if r.split()[0] in ("f", "r")]
    assert rule.split()[1] == str(config.nocreate_file)
    assert rule.startswith("r " if new_accounts else "f ")


def test_self_signed_mode_reaches_new_as_a_dclogin_url(tmp_path):
    out = evaluate({"tls": {"mode": "self-signed", "certificateFile": None, "keyFile": None}}, {})
    config = read_ini(out["chatmailIni"], tmp_path)
    assert config.tls_cert_mode == "self-signed"
    assert "ic=3" in new_credentials(config)["dclogin_url"]


def test_the_module_chatmail_ini_is_complete(tmp_path):
    from chatmaild.config import key_parsers

    out = evaluate({}, {})
    written = {line.split(" = ")[0] for line in out["chatmailIni"].splitlines()[1:]}
    assert set(key_parsers()) <= written
    config = read_ini(out["chatmailIni"], tmp_path)
    assert config.unused_keys == ()
    assert config.mailboxes_dir == Path("/home/vmail/mail/chat.example.org")
    assert config.turn_secret_file == Path("/run/credentials/chatmail-metadata.service/turn-secret")
    assert config.iroh_relay == ""


def test_without_turn_no_turn_secret_is_named(tmp_path):
    out = evaluate({"turn": {"enable": False, "secretFile": "/var/lib/chatmail-turn/secret"}}, {})
    assert read_ini(out["chatmailIni"], tmp_path).turn_secret_file is None
