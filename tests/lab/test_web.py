"""nginx in front of the relay, configured from the NixOS module's data: the port-443 split by
ALPN, port 80, autoconfig and MTA-STS, /new, and relay-to-relay delivery over HTTPS."""

from __future__ import annotations

import json

from conftest import labmod


def test_port_443_hands_imap_and_smtp_to_dovecot_and_postfix_by_alpn(client, lab):
    imap = client("alpn", "relay1.test", "imap")
    smtp = client("alpn", "relay1.test", "smtp")
    assert imap["greeting"].startswith("* OK") and "Dovecot" in imap["greeting"]
    assert smtp["greeting"].startswith("220 relay1.test ESMTP")
    print(f"443 + ALPN imap: {imap['greeting'][:60]}...\n443 + ALPN smtp: {smtp['greeting']}")


def test_port_80_redirects_to_https(client):
    r = client("http", "GET", "http://relay1.test/some/page")
    assert r["status"] == 301 and r["location"] == "https://relay1.test/some/page"


def test_autoconfig_and_mta_sts_are_served(client):
    auto = client("http", "GET", "https://relay1.test/.well-known/autoconfig/mail/config-v1.1.xml")
    assert auto["status"] == 200 and "<hostname>relay1.test</hostname>" in auto["body"]
    sts = client("http", "GET", "https://relay1.test/.well-known/mta-sts.txt")
    assert sts["status"] == 200 and "mode: enforce" in sts["body"] and "mx: relay1.test" in sts["body"]


def test_new_gives_credentials_that_create_an_account_on_first_login(client):
    r = client("http", "POST", "https://relay1.test/new")
    assert r["status"] == 200, r
    creds = json.loads(r["body"])
    assert creds["email"].endswith("@relay1.test") and len(creds["email"].split("@")[0]) == 9
    assert client("login", creds["email"], creds["password"])["ok"]
    opened_in_browser = client("http", "GET", "https://relay1.test/new")
    assert opened_in_browser["status"] == 301 and opened_in_browser["location"] == "dcaccount:https://relay1.test/new"


def test_mxdeliv_takes_dkim_signed_encrypted_mail_and_refuses_the_rest(client, account):
    bob, bob_pw = account("relay2.test")
    key = str(labmod.STATE / "ca/relay1.test.dkim.key")
    good = client("mxdeliv", "--host", "relay2.test", "--from", "alice0001@relay1.test", "--to", bob,
                  "--dkim-key", key)
    assert (good["status"], good["body"]) == (200, "250 OK"), good
    assert client("wait", bob, bob_pw, "--token", good["token"])["ok"]
    unsigned = client("mxdeliv", "--host", "relay2.test", "--from", "alice0001@relay1.test", "--to", bob)
    assert unsigned["status"] == 400 and unsigned["body"].startswith("554"), unsigned
    cleartext = client("mxdeliv", "--host", "relay2.test", "--from", "alice0001@relay1.test", "--to", bob,
                       "--dkim-key", key, "--cleartext")
    assert cleartext["status"] == 400 and cleartext["body"].startswith("523"), cleartext
    print(f"POST https://relay2.test/mxdeliv: signed+encrypted {good['status']} {good['body']}; "
          f"unsigned {unsigned['status']} {unsigned['body']}; cleartext {cleartext['status']} {cleartext['body']}")


def test_relays_serve_the_certificate_acme_issued_them(client):
    """The lab's relays take their certificates from ACME (pebble, HTTP-01 through nginx),
    as NixOS's security.acme does; the other relay and the clients verify them."""
    for relay in ("relay1.test", "relay2.test"):
        r = client("alpn", relay, "imap")
        assert r["issuer"].startswith("Pebble Intermediate CA"), r
    print(f"relay1.test and relay2.test present certificates issued by {r['issuer']!r}")


def test_the_relays_web_pages_offer_the_invite_and_explain_retention(client):
    index = client("http", "GET", "https://relay1.test/")
    assert index["status"] == 200 and "DCACCOUNT:https://relay1.test/new" in index["body"]
    qr = client("http", "GET", "https://relay1.test/qr-invite.svg")
    assert qr["status"] == 200 and qr["content_type"].startswith("image/svg+xml") and "<svg" in qr["body"]
    info = client("http", "GET", "https://relay1.test/info.html")
    assert info["status"] == 200 and "20" in info["body"]
    privacy = client("http", "GET", "https://relay1.test/privacy.html")
    assert privacy["status"] == 200 and "not filled this in" in privacy["body"]
