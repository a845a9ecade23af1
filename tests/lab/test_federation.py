"""Two relays federating, proven with the real Postfix 3.10, Dovecot 2.4 and Delta Chat core."""

from __future__ import annotations

import secrets
import subprocess
import sys

from conftest import HERE, journal, labmod, relay_file, wait_for_journal

# relay1's mailboxes directory (tests/lab/relay.nix paths)
MAILBOXES = labmod.paths("relay1")["mailboxesDir"]


def test_first_login_creates_the_account_and_a_wrong_password_is_refused(client, account):
    addr, password = account("relay1.test")
    stored = relay_file("relay1", f"{MAILBOXES}/{addr}/password").read_text()
    assert stored.startswith("{SHA512-CRYPT}$6$")
    assert client("login", addr, password)["ok"]
    refused = client("login", addr, password + "x")
    assert not refused["ok"] and "AUTHENTICATIONFAILED" in refused["error"]
    print(f"{addr}: created by its first login; wrong password refused: {refused['error']}")


def test_a_login_that_breaks_the_username_rules_creates_nothing(client):
    addr = "ab@relay1.test"
    result = client("login", addr, "p" + secrets.token_urlsafe(12))
    assert not result["ok"]
    assert not relay_file("relay1", f"{MAILBOXES}/{addr}").exists()


def test_encrypted_mail_crosses_from_relay1_to_relay2_over_verified_tls(client, account):
    alice, alice_pw = account("relay1.test")
    bob, bob_pw = account("relay2.test")
    sent = client("send", alice, alice_pw, "--to", bob)
    assert sent["ok"], sent
    got = client("wait", bob, bob_pw, "--token", sent["token"])
    assert got["ok"], got
    assert "multipart/encrypted" in got["message"]
    assert "Subject: [...]" in got["message"], "the outgoing relay hides the subject"
    # ... and does not write it into its log either (a Postfix REPLACE would log it).
    assert not [line for line in journal("relay1", labmod.paths()["postfixUnit"]) if f"encrypted {sent['token']}" in line]
    line = wait_for_journal("relay1", labmod.paths()["postfixUnit"], "Verified TLS connection established to relay2.test")
    print(f"{alice} -> {bob}: delivered, encrypted, subject hidden\n  relay1: {line.split(': ', 1)[1]}")


def test_cleartext_is_refused_with_523_at_submission(client, account):
    alice, alice_pw = account("relay1.test")
    for port in ("465", "587"):
        result = client("send", alice, alice_pw, "--to", "someone@relay2.test", "--cleartext", "--port", port)
        assert not result["ok"] and result["code"] == 523, result
        assert "Encryption Needed" in result["text"]
        print(f"submission on {port}: {result['code']} {result['text']}")


def test_cleartext_from_another_mail_server_is_refused_with_523_on_port_25(client, account):
    bob, _ = account("relay2.test")
    result = client("deliver", "--host", "relay2.test", "--from", "someone@example.test", "--to", bob, "--cleartext")
    assert not result["ok"] and result["code"] == 523, result
    print(f"port 25 of relay2.test: {result['code']} {result['text']}")


def test_relay2_refuses_cleartext_that_relay1_delivers_with_523(account):
    """A message that skipped relay1's outgoing filter (sendmail on the host) still cannot
    enter relay2: relay2's incoming filter refuses it, and relay1's Postfix sees the 523."""
    bob, _ = account("relay2.test")
    token = secrets.token_hex(6)
    message = f"From: root@relay1.test\r\nTo: {bob}\r\nSubject: {token}\r\n\r\nnot encrypted\r\n"
    labmod.host_run(labmod.BY_NAME["relay1"], ["sendmail", "-f", "root@relay1.test", bob], input=message)
    line = wait_for_journal("relay1", labmod.paths()["postfixUnit"], f"to=<{bob}>")
    assert "said: 523" in line and "status=bounced" in line, line
    print(f"relay1 delivering cleartext to relay2: {line.split('said: ', 1)[1]}")


def test_delta_chat_users_on_two_relays_secure_join_and_talk(lab):
    cmd = labmod.in_host(labmod.CLIENT, [sys.executable, str(HERE / "dcdemo.py"),
                                         "--relays", "relay1.test", "relay2.test"])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "Secure-Join done" in r.stdout and "demo succeeded" in r.stdout
