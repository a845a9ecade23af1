"""The issue's wrong accepts, through the real Postfix and nginx: the client address reaches
filtermail (XFORWARD) for IP-literal senders, address extensions do not bypass a recipient's
encryption rule, the operator's passthrough contact takes cleartext, and an unreachable
filter is named in Postfix's temporary error."""

from __future__ import annotations

import subprocess

from conftest import labmod, relay_file

RELAY1 = labmod.BY_NAME["relay1"]


def maildir(relay: str, addr: str):
    return relay_file(relay, f"{labmod.paths(relay)['mailboxesDir']}/{addr}")


def messages(relay: str, addr: str) -> list[bytes]:
    home = maildir(relay, addr)
    return [p.read_bytes() for sub in ("new", "cur") if (home / sub).is_dir() for p in (home / sub).iterdir()]


def test_an_ip_literal_sender_is_accepted_on_port_25_only_from_that_very_address(client, account):
    alice, alice_pw = account("relay1.test")
    own = f"peer@[{labmod.CLIENT.ip}]"
    other = "peer@[10.77.0.99]"
    accepted = client("deliver", "--host", "relay1.test", "--from", own, "--to", alice)
    assert accepted["ok"], "Postfix passed the client's address to filtermail (XFORWARD)"
    assert client("wait", alice, alice_pw, "--token", accepted["token"])["ok"]
    refused = client("deliver", "--host", "relay1.test", "--from", other, "--to", alice)
    assert not refused["ok"] and 500 <= refused["code"] < 600, refused
    over_https = client("mxdeliv", "--host", "relay1.test", "--from", own, "--to", alice)
    assert over_https["status"] >= 400, over_https
    for r in (refused, over_https):
        assert not any(r["token"].encode() in m for m in messages("relay1", alice))
    print(f"x@[client ip] on port 25: 250; x@[other ip]: {refused['code']} {refused['text']}; "
          f"over /mxdeliv: {over_https['status']} {over_https['body']}")


def test_cleartext_to_an_address_extension_of_a_strict_user_is_refused_and_nothing_lands(client, account):
    bob, _ = account("relay1.test")
    (maildir("relay1", bob) / "enforceE2EEincoming").touch()
    local, domain = bob.split("@")
    for rcpt in (f"{local}+x@{domain}", f"{local}+@{domain}", f"{local.upper()}+Y@{domain}", bob):
        r = client("deliver", "--host", "relay1.test", "--from", "someone@relay2.test", "--to", rcpt, "--cleartext")
        assert not r["ok"] and r["code"] == 523, (rcpt, r)
    assert messages("relay1", bob) == []


def test_cleartext_to_the_passthrough_contact_is_delivered_and_to_anyone_else_refused_with_523(client, account):
    alice, alice_pw = account("relay1.test")
    other, _ = account("relay2.test")
    contact = "privacy@relay2.test"  # passthrough_recipients in the lab's settings
    home = maildir("relay2", contact)
    if not home.exists():
        crypt = subprocess.run(["openssl", "passwd", "-6", "contact-password"], check=True, capture_output=True,
                               text=True).stdout.strip()
        for sub in ("cur", "new", "tmp"):
            (home / sub).mkdir(parents=True)
        (home / "password").write_text("{SHA512-CRYPT}" + crypt)
        labmod.host_run(labmod.BY_NAME["relay2"],
                        ["chown", "-R", "vmail:vmail", f"{labmod.paths('relay2')['mailboxesDir']}/{contact}"])
    sent = client("send", alice, alice_pw, "--to", contact, "--cleartext")
    assert sent["ok"], sent
    got = client("wait", contact, "contact-password", "--token", sent["token"], "--timeout", "60")
    assert got["ok"] and "This is not encrypted" in got["message"], got
    refused = client("send", alice, alice_pw, "--to", other, "--cleartext")
    assert not refused["ok"] and refused["code"] == 523, refused
    print(f"cleartext to {contact}: delivered; to {other}: {refused['code']} {refused['text']}")


def test_an_unreachable_filter_is_named_in_postfix_temporary_error(client, account):
    alice, alice_pw = account("relay1.test")
    bob, _ = account("relay2.test")
    relay2 = labmod.BY_NAME["relay2"]
    labmod.host_run(relay2, ["systemctl", "stop", "filtermail-incoming.service"])
    try:
        incoming = client("deliver", "--host", "relay2.test", "--from", alice, "--to", bob)
    finally:
        labmod.host_run(relay2, ["systemctl", "start", "filtermail-incoming.service"])
    labmod.host_run(RELAY1, ["systemctl", "stop", "filtermail.service"])
    try:
        outgoing = client("send", alice, alice_pw, "--to", bob)
    finally:
        labmod.host_run(RELAY1, ["systemctl", "start", "filtermail.service"])
    for r in (incoming, outgoing):
        assert not r["ok"] and 400 <= r["code"] < 500, r
        assert "mail filter is not reachable" in r["text"], r
    print(f"filter down, port 25: {incoming['code']} {incoming['text']}\n"
          f"filter down, submission: {outgoing['code']} {outgoing['text']}")


NEW_FROM_RELAY = """
import http.client, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
conn = http.client.HTTPSConnection("relay1.test", 443, context=ctx, timeout=30)
conn.request("POST", "/new", body=b"")
print(conn.getresponse().status)
"""


def test_new_is_rate_limited_per_client_with_429_and_other_clients_are_still_served(lab):
    """nginx limits /new per client address, which the port-443 multiplexer passes on in a
    PROXY header (without it every HTTPS client would be 127.0.0.1, one shared limit)."""
    import json
    import sys
    import tempfile
    from pathlib import Path

    from conftest import HERE

    cases = [{"kind": "https", "host": "relay1.test", "method": "POST", "path": "/new", "body": ""}] * 12
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cases, f)
    try:
        cmd = labmod.in_host(labmod.CLIENT, [sys.executable, str(HERE / "hostilelab.py"),
                                             "--cafile", str(labmod.STATE / "ca/ca.pem"), f.name])
        statuses = [r["code"] for r in json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True,
                                                                 timeout=300).stdout)]
    finally:
        Path(f.name).unlink()
    assert statuses[0] == 200 and 429 in statuses, statuses
    # Another client (relay1 itself, from its own address) is not held back by the first one's limit.
    ca = f"{labmod.paths('relay1')['caTrustDir']}/chatmail-lab.crt"
    other = labmod.host_run(RELAY1, ["python3", "-c", NEW_FROM_RELAY, ca], capture=True).stdout.strip()
    assert other == "200", other
    print(f"12 POST /new at once from the client: {statuses}; meanwhile another client: {other}")
