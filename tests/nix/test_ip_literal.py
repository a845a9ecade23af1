"""A relay without a domain (mail_domain an IPv4 address): what the pure configuration makes
of it, as the reference relay does it; the lab runs it as relay3 (tests/lab/test_ip_relay.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IDENTITY = ROOT / "nixos/modules/chatmail/config/identity.nix"


def identity(domain: str) -> dict:
    out = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E",
                          f"import {IDENTITY} {json.dumps(domain)}"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("domain", ["chat.example.org", "_cm0.localchat", "1.2.3.256", "01.2.3.4", "1.2.3"])
def test_a_domain_or_anything_not_an_ipv4_address_is_used_as_it_is(domain):
    assert identity(domain) == {"ipv4": False, "literal": domain, "hostname": domain}


def test_an_ipv4_address_is_received_as_its_literal_under_its_reverse_pointer_name():
    assert identity("192.0.2.7") == {"ipv4": True, "literal": "[192.0.2.7]", "hostname": "7.2.0.192.in-addr.arpa"}


def test_postfix_of_an_ip_literal_relay_treats_the_bracketed_address_as_its_own_destination():
    out = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", str(ROOT / "tests/lab/relay.nix"),
                          "--argstr", "domain", "10.77.0.13", "--argstr", "tlsMode", "self-signed",
                          "--arg", "dkim", "false"], check=True, capture_output=True, text=True)
    relay = json.loads(out.stdout)
    main = relay["postfix"]["main"]
    assert (main["myhostname"], main["myorigin"], main["mydestination"]) == (
        "13.0.77.10.in-addr.arpa", "[10.77.0.13]", ["[10.77.0.13]"])
    assert main.get("smtpd_milters") is None and main.get("non_smtpd_milters") is None
    assert relay["opendkim"] is None
    assert "tls_cert_mode = self-signed" in relay["chatmailIni"]
