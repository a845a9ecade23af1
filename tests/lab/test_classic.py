"""A chatmail relay and an ordinary mail server (classic.test: stock Debian Postfix, Dovecot and
OpenDKIM, no chatmail rules) exchanging mail both ways over port 25: encrypted mail goes
through in each direction (relay1 verifying classic's certificate and DKIM signature, classic
verifying relay1's), cleartext from the classic side is refused with 523 and its sender gets
a bounce that says why, and a bounce made by the classic server reaches the relay user."""

from __future__ import annotations

import base64
import email
import email.policy
import secrets
import subprocess
import sys
import time
from email.message import EmailMessage

import pytest

import classic
from conftest import labmod, relay_file, wait_for_journal

CLASSIC = labmod.CLASSIC
POSTFIX = labmod.paths("relay1")["postfixUnit"]
# A delivery over port 25 and a bounce each take well under a second here; the margin is for
# a loaded machine.
DELIVERY_TIMEOUT = "60"


@pytest.fixture
def classic_account(lab):
    """A new user on classic.test (a line in its Dovecot's passwd-file)."""

    def make() -> tuple[str, str]:
        addr = f"c{secrets.token_hex(4)}@{classic.DOMAIN}"
        password = "p" + secrets.token_urlsafe(12)
        classic.add_user(addr, password)
        return addr, password

    return make


def parse(raw: str) -> EmailMessage:
    return email.message_from_string(raw, policy=email.policy.default)  # type: ignore[return-value]


def relay_maildir_messages(relay: str, addr: str) -> list[bytes]:
    home = relay_file(relay, f"{labmod.paths(relay)['mailboxesDir']}/{addr}")
    return [p.read_bytes() for sub in ("new", "cur") if (home / sub).is_dir() for p in (home / sub).iterdir()]


def delivery_status(report: EmailMessage) -> dict[str, str]:
    """The per-recipient fields of a DSN (RFC 3464), lower-case names."""
    assert report.get_content_type() == "multipart/report", report.get_content_type()
    assert report.get_param("report-type") == "delivery-status"
    part = next(p for p in report.iter_parts() if p.get_content_type() == "message/delivery-status")
    fields: dict[str, str] = {}
    for block in part.get_payload():  # one Message per field block (message, then recipients)
        for name, value in block.items():
            fields[name.lower()] = str(value)
    return fields


def queue_id(line: str) -> str:
    """The Postfix queue ID of a journal line ("... postfix/smtp[12]: 4Xyz: to=<...>, ...")."""
    return line.split(": ")[1]


def human_part(report: EmailMessage) -> str:
    """The DSN's text for people, its lines unwrapped."""
    first = next(iter(report.iter_parts()))
    assert first.get_content_type() == "text/plain"
    return " ".join(first.get_content().split())


PUBLISHED_KEY = """
import sys, dns.resolver
answer = dns.resolver.resolve(sys.argv[1], "TXT")
print(b"".join(answer[0].strings).decode())
"""


def test_classic_test_is_a_stock_server_and_the_lab_publishes_the_dkim_key_it_signs_with(lab):
    assert labmod.host_run(CLASSIC, ["systemctl", "is-system-running"], check=False,
                           capture=True).stdout.strip() == "running"
    conf = labmod.host_run(CLASSIC, ["postconf", "-n"], capture=True).stdout
    assert "smtpd_proxy_filter" not in conf and "smtp_tls_security_level = may" in conf, conf
    assert not (labmod.merged(CLASSIC) / "etc/chatmail").exists()
    # What a verifier finds in DNS is the public half of the key OpenDKIM signs with.
    name = f"{classic.DKIM_SELECTOR}._domainkey.{classic.DOMAIN}"
    record = labmod.host_run(labmod.CLIENT, [sys.executable, "-c", PUBLISHED_KEY, name], capture=True).stdout
    tags = dict(tag.strip().split("=", 1) for tag in record.strip().split(";") if tag.strip())
    private = labmod.merged(CLASSIC) / classic.OPENDKIM["KeyFile"].lstrip("/")
    der = subprocess.run(["openssl", "pkey", "-in", str(private), "-pubout", "-outform", "DER"], check=True,
                         capture_output=True).stdout
    assert tags["v"] == "DKIM1" and tags["k"] == "rsa" and tags["p"] == base64.b64encode(der).decode(), record
    print(f"{classic.DOMAIN}: stock Postfix, Dovecot and OpenDKIM; {name} publishes its signing key")


def test_encrypted_mail_from_a_classic_user_lands_in_the_relay_users_maildir(client, account, classic_account):
    carol, carol_pw = classic_account()
    bob, bob_pw = account("relay1.test")
    started = time.monotonic()
    sent = client("send", carol, carol_pw, "--to", bob, "--port", "587")
    assert sent["ok"], sent
    got = client("wait", bob, bob_pw, "--token", sent["token"], "--timeout", DELIVERY_TIMEOUT)
    assert got["ok"], got
    took = time.monotonic() - started
    msg = parse(got["message"])
    assert msg.get_content_type() == "multipart/encrypted" and msg["From"] == carol
    stored = [m for m in relay_maildir_messages("relay1", bob) if sent["token"].encode() in m]
    assert len(stored) == 1, "exactly one copy in bob's maildir on relay1"
    # classic delivered it to relay1, signed (relay1's filter takes nothing unsigned from
    # classic.test).
    sent_line = wait_for_journal("classic", classic.POSTFIX_UNIT, f"to=<{bob}>, relay=")
    assert "relay=relay1.test[" in sent_line and "status=sent" in sent_line, sent_line
    signed = wait_for_journal("classic", "opendkim.service", f"{queue_id(sent_line)}: DKIM-Signature field added")
    assert f"d={classic.DOMAIN}" in signed and f"s={classic.DKIM_SELECTOR}" in signed, signed
    # Without classic's signature the same kind of message does not get in.
    unsigned = client("deliver", "--host", "relay1.test", "--from", carol, "--to", bob)
    assert not unsigned["ok"] and unsigned["code"] == 554 and "DKIM" in unsigned["text"], unsigned
    print(f"{carol} -> {bob}: in the maildir after {took:.2f} s\n  classic: {sent_line.split(': ', 1)[1]}")


def test_cleartext_from_a_classic_user_is_refused_with_523_and_the_sender_gets_a_bounce_saying_why(
        client, account, classic_account):
    carol, carol_pw = classic_account()
    bob, _ = account("relay1.test")
    sent = client("send", carol, carol_pw, "--to", bob, "--port", "587", "--cleartext")
    assert sent["ok"], "classic.test takes the message: it has no rules about encryption"
    refused = wait_for_journal("classic", classic.POSTFIX_UNIT, f"to=<{bob}>, relay=")
    assert "said: 523 Encryption Needed" in refused and "status=bounced" in refused, refused
    got = client("wait", carol, carol_pw, "--token", sent["token"], "--timeout", DELIVERY_TIMEOUT)
    assert got["ok"], got
    bounce = parse(got["message"])
    assert bounce["From"].addresses[0].username.upper() == "MAILER-DAEMON"
    assert bounce["From"].addresses[0].domain == classic.DOMAIN
    status = delivery_status(bounce)
    assert status["final-recipient"].lower() == f"rfc822; {bob}", status
    # The relay's reply has no enhanced status code, so Postfix reports a generic 5.0.0.
    assert status["action"] == "failed" and status["status"].startswith("5."), status
    assert "523 Encryption Needed" in status["diagnostic-code"], status
    text = human_part(bounce)
    assert bob in text and "Encryption Needed" in text and "relay1.test" in text, text
    assert not any(sent["token"].encode() in m for m in relay_maildir_messages("relay1", bob))
    print(f"{carol} -> {bob} cleartext: bounced to {carol}\n  Diagnostic-Code: {status['diagnostic-code']}")


def test_a_relay_users_encrypted_mail_reaches_a_classic_user_over_verified_tls_with_a_valid_dkim_signature(
        client, account, classic_account):
    alice, alice_pw = account("relay1.test")
    carol, carol_pw = classic_account()
    started = time.monotonic()
    sent = client("send", alice, alice_pw, "--to", carol)
    assert sent["ok"], sent
    got = client("wait", carol, carol_pw, "--token", sent["token"], "--timeout", DELIVERY_TIMEOUT)
    assert got["ok"], got
    took = time.monotonic() - started
    msg = parse(got["message"])
    assert msg.get_content_type() == "multipart/encrypted" and msg["From"] == alice
    # classic's OpenDKIM verified relay1's signature, with the key relay1 publishes.
    results = [str(v) for v in msg.get_all("Authentication-Results", [])]
    verdicts = [r for r in results if r.startswith(f"{classic.DOMAIN};") and "header.d=relay1.test" in r]
    assert verdicts and "dkim=pass" in verdicts[0], results
    peer = f"{classic.DOMAIN}[{CLASSIC.ip}]:25"
    tls = wait_for_journal("relay1", POSTFIX, f"Verified TLS connection established to {peer}")
    delivered = wait_for_journal("relay1", POSTFIX, f"to=<{carol}>, relay=")
    assert f"relay={peer}" in delivered and "status=sent" in delivered, delivered
    print(f"{alice} -> {carol}: delivered after {took:.2f} s\n  relay1: {tls.split(': ', 1)[1]}\n"
          f"  classic: Authentication-Results: {' '.join(verdicts[0].split())}")


def test_a_bounce_from_the_classic_server_for_an_unknown_user_reaches_the_relay_user(client, account):
    alice, alice_pw = account("relay1.test")
    nobody = f"nobody-{secrets.token_hex(4)}@{classic.DOMAIN}"
    sent = client("send", alice, alice_pw, "--to", nobody)
    assert sent["ok"], "classic.test checks recipients when Dovecot delivers, not at RCPT"
    bounced = wait_for_journal("classic", classic.POSTFIX_UNIT, f"to=<{nobody}>, relay=")
    assert "status=bounced" in bounced, bounced
    got = client("wait", alice, alice_pw, "--token", nobody.split("@")[0], "--timeout", DELIVERY_TIMEOUT)
    assert got["ok"], got
    bounce = parse(got["message"])
    sender = bounce["From"].addresses[0]
    assert (sender.username.upper(), sender.domain) == ("MAILER-DAEMON", classic.DOMAIN), bounce["From"]
    status = delivery_status(bounce)
    assert status["final-recipient"].lower() == f"rfc822; {nobody}", status
    assert status["action"] == "failed" and status["status"].startswith("5.1."), status
    assert nobody in human_part(bounce)
    print(f"{alice} -> {nobody}: bounced by {classic.DOMAIN}, delivered to {alice}\n"
          f"  Diagnostic-Code: {status.get('diagnostic-code')}")


def test_a_bounce_the_classic_server_does_not_sign_is_refused_by_the_relay(client, account):
    """Why classic.test passes its bounces through OpenDKIM (internal_mail_filter_classes =
    bounce; Postfix's default leaves bounces out): relays take no unsigned mail, bounces
    included."""
    alice, alice_pw = account("relay1.test")
    nobody = f"nobody-{secrets.token_hex(4)}@{classic.DOMAIN}"
    labmod.host_run(CLASSIC, ["postconf", "-X", "internal_mail_filter_classes"])
    labmod.host_run(CLASSIC, ["postfix", "reload"], capture=True)
    try:
        sent = client("send", alice, alice_pw, "--to", nobody)
        assert sent["ok"], sent
        refused = wait_for_journal("classic", classic.POSTFIX_UNIT, f"to=<{alice}>, relay=")
    finally:
        labmod.host_run(CLASSIC, ["postconf", "-e", "internal_mail_filter_classes=bounce"])
        labmod.host_run(CLASSIC, ["postfix", "reload"], capture=True)
    assert "said: 554 5.7.1 No DKIM signature found" in refused and "status=bounced" in refused, refused
    assert not any(nobody.encode() in m for m in relay_maildir_messages("relay1", alice))
    print(f"unsigned bounce for {alice}: {refused.split('said: ', 1)[1]}")
