"""chatmaild's services against the real Dovecot 2.4 and Postfix 3.10: push notifications,
metadata, last login, the rate limit, DKIM and accounts in the upstream layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import HERE, journal, labmod, relay_file
from faults import wait_until

# relay1's mailboxes directory (tests/lab/relay.nix paths)
MAILBOXES = labmod.paths("relay1")["mailboxesDir"]

RELAY1 = labmod.BY_NAME["relay1"]


def push_records() -> list[dict]:
    if not labmod.PUSH_LOG.exists():
        return []
    return [json.loads(line) for line in labmod.PUSH_LOG.read_text().splitlines() if line.strip()]


def wait_for_push(token: str, count: int = 1, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = [r for r in push_records() if r["token"] == token]
        if len(got) >= count:
            return got
        time.sleep(0.05)
    raise AssertionError(f"{count} push(es) for the token expected within {timeout} s, got {len(got)}")


def test_relays_announce_chatmail_and_push_capabilities(client, account):
    addr, password = account("relay1.test")
    caps = client("login", addr, password)["capabilities"]
    assert "XCHATMAIL" in caps and "XDELTAPUSH" in caps and "METADATA" in caps
    assert "IDLE" in caps, "the defaults stay: Delta Chat needs IDLE"


def test_a_login_records_the_day_as_the_password_files_mtime(client, account):
    addr, password = account("relay1.test")
    client("login", addr, password)
    mtime = relay_file("relay1", f"{MAILBOXES}/{addr}/password").stat().st_mtime
    assert mtime == int(time.time()) // 86400 * 86400


def test_device_tokens_are_kept_per_account_through_imap_metadata(client, account):
    addr, password = account("relay1.test")
    for token in ("first-device", "second-device"):
        r = client("metadata", addr, password, "--mailbox", "INBOX", "--key", "/private/devicetoken",
                   "--value", token)
        assert r["ok"], r
    r = client("metadata", addr, password, "--mailbox", "INBOX", "--key", "/private/devicetoken")
    assert r["value"] == "first-device second-device"


def test_turn_credentials_from_metadata_are_accepted_by_coturn(client, account):
    import base64
    import hashlib
    import hmac

    addr, password = account("relay1.test")
    r = client("metadata", addr, password, "--key", "/shared/vendor/deltachat/turn")
    host, port, username, credential = r["value"].split(":")
    assert (host, port) == ("relay1.test", "3478")
    assert int(username) > time.time(), "the username is the expiry time"
    secret = relay_file("relay1", labmod.paths()["turnSecretFile"]).read_text().strip()
    expected = base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()
    assert credential == expected
    allocated = client("turn", host, username, credential)
    assert allocated["ok"] and allocated["realm"] == "relay1.test", allocated
    refused = client("turn", host, username, credential[:-2] + "AA")
    assert not refused["ok"] and refused["error"] == 401, refused
    print(f"TURN from metadata: {host}:{port}:{username}:<hmac> (valid until {time.ctime(int(username))}); "
          f"coturn allocates a relay port ({allocated['relayed_port']}) with it and answers "
          f"{refused['error']} {refused['reason']} to a wrong one")


def test_a_delivery_reaches_the_push_proxy_within_a_second(client, account):
    alice, alice_pw = account("relay1.test")
    bob, bob_pw = account("relay2.test")
    token = f"token-{os.urandom(4).hex()}"
    assert client("metadata", alice, alice_pw, "--mailbox", "INBOX", "--key", "/private/devicetoken",
                  "--value", token)["ok"]
    before = time.time()
    sent = client("send", bob, bob_pw, "--to", alice)
    assert sent["ok"], sent
    sent_at = time.time()
    (push,) = wait_for_push(token, timeout=10)
    delay = push["time"] - sent_at
    print(f"push for {alice} reached the proxy {delay * 1000:.0f} ms after the sender's SMTP session ended "
          f"({(push['time'] - before) * 1000:.0f} ms after it began)")
    assert delay < 1.0


def test_pending_pushes_survive_the_proxy_being_down_and_a_metadata_restart(client, account):
    alice, alice_pw = account("relay1.test")
    bob, bob_pw = account("relay2.test")
    token = f"token-{os.urandom(4).hex()}"
    assert client("metadata", alice, alice_pw, "--mailbox", "INBOX", "--key", "/private/devicetoken",
                  "--value", token)["ok"]
    queue = relay_file("relay1", f"{MAILBOXES}/pending_notifications")
    labmod.stop_push_proxy()
    try:
        sent = client("send", bob, bob_pw, "--to", alice, "--count", "3")
        assert all(r["ok"] for r in sent["all"]), sent
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(list(queue.iterdir())) < 3:
            time.sleep(0.1)
        assert len(list(queue.iterdir())) == 3, "one persisted item per delivery while the proxy is down"
        labmod.host_run(RELAY1, ["systemctl", "stop", "chatmail-metadata.service"])
    finally:
        labmod.start_push_proxy()
    labmod.host_run(RELAY1, ["systemctl", "start", "chatmail-metadata.service"])
    pushes = wait_for_push(token, count=3, timeout=30)
    time.sleep(1)
    assert len([r for r in push_records() if r["token"] == token]) == 3, "each pending push arrives once"
    assert not list(queue.iterdir())
    print(f"3 pushes queued while the proxy was down, metadata restarted, all 3 delivered "
          f"{pushes[-1]['time'] - pushes[0]['time']:.2f} s apart")


def test_a_sender_over_the_rate_limit_gets_450(client, account):
    alice, alice_pw = account("relay1.test")
    result = client("send", alice, alice_pw, "--to", "someone@relay2.test", "--count", "13")
    codes = [r["code"] for r in result["all"]]
    assert codes[:10] == [250] * 10, codes
    refused = [r for r in result["all"] if r["code"] == 450]
    assert refused and "Too much mail from" in refused[0]["text"], codes
    print(f"13 messages at once: {codes.count(250)} accepted, then 450: {refused[0]['text']}")


def test_mail_with_a_forged_dkim_signature_is_refused_with_554(client, account):
    bob, _ = account("relay2.test")
    forged = client("deliver", "--host", "relay2.test", "--from", "someone@relay1.test", "--to", bob,
                    "--forge-dkim")
    assert not forged["ok"] and forged["code"] == 554, forged
    unsigned = client("deliver", "--host", "relay2.test", "--from", "someone@relay1.test", "--to", bob)
    assert not unsigned["ok"] and unsigned["code"] == 554, unsigned
    print(f"forged signature: {forged['code']} {forged['text']}\nno signature: {unsigned['code']} {unsigned['text']}")


def test_relay1s_dkim_signature_is_verified_by_relay2(client, account):
    alice, alice_pw = account("relay1.test")
    bob, bob_pw = account("relay2.test")
    sent = client("send", alice, alice_pw, "--to", bob)
    assert sent["ok"], sent
    got = client("wait", bob, bob_pw, "--token", sent["token"])
    assert got["ok"], got
    assert "DKIM-Signature" not in got["message"], "signatures are dropped at final delivery"


def test_an_account_copied_from_an_upstream_relay_logs_in(client):
    addr = "legacy001@relay1.test"
    password = "an-upstream-password"
    crypt = subprocess.run(["openssl", "passwd", "-6", password], check=True, capture_output=True,
                           text=True).stdout.strip()
    home = relay_file("relay1", f"{MAILBOXES}/{addr}")
    (home / "cur").mkdir(parents=True)
    for sub in ("new", "tmp"):
        (home / sub).mkdir()
    (home / "password").write_text("{SHA512-CRYPT}" + crypt)
    (home / "enforceE2EEincoming").touch()
    (home / "cur/1700000000.M1P1.legacy,S=120:2,S").write_text(
        "From: x@relay1.test\r\nTo: legacy001@relay1.test\r\nSubject: old\r\n\r\nkept\r\n")
    labmod.host_run(RELAY1, ["chown", "-R", "vmail:vmail", f"{MAILBOXES}/{addr}"])
    result = client("login", addr, password)
    assert result["ok"], result
    assert not client("login", addr, password + "!")["ok"]


def test_expire_removes_exactly_what_retention_says_and_dovecot_follows(client, account):
    """Old mail, large read mail and inactive accounts go; recent mail and the rest stay."""
    day = 86400
    now = time.time()
    addr, password = account("relay1.test")
    idle, _ = account("relay1.test")
    home = relay_file("relay1", f"{MAILBOXES}/{addr}")
    files = {  # name -> (directory, size, age in days, expected to survive)
        "old": ("cur", 100, 21, False),
        "recent": ("cur", 100, 2, True),
        "large-read": ("cur", 300_000, 8, False),
        "large-unread": ("new", 300_000, 8, True),
        "large-fresh": ("cur", 300_000, 3, True),
        "subfolder-old": (".DeltaChat/cur", 100, 30, False),
    }
    for name, (folder, size, age, _) in files.items():
        path = home / folder / f"{int(now - age * day)}.M1P1.{name},S={size}:2,S"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
        os.utime(path, (now - age * day, now - age * day))
    inactive = relay_file("relay1", f"{MAILBOXES}/{idle}")
    # The login that created the account also reported it to chatmail-lastlogin (started on
    # demand), which moves the password's time to the start of today. That must have landed
    # before the time is moved back, or it would move it forward again after.
    wait_until(lambda: int((inactive / "password").stat().st_mtime) % day == 0, 30, 0.1,
               "the last-login update of the account that is made inactive")
    os.utime(inactive / "password", (now - 91 * day, now - 91 * day))
    labmod.host_run(RELAY1, ["chown", "-R", "vmail:vmail", MAILBOXES])

    # The daily unit, started now: chatmail-expire --remove in its sandbox.
    labmod.host_run(RELAY1, ["systemctl", "start", "chatmail-expire.service"])
    print([line for line in journal("relay1", "chatmail-expire.service") if "chatmail-expire[" in line][-1])
    for name, (folder, _, _, survives) in files.items():
        present = any(p.name.split(".", 2)[2].startswith(name + ",") for p in (home / folder).iterdir())
        assert present == survives, f"{name} in {folder}: expected {'kept' if survives else 'removed'}"
    assert not inactive.exists(), "an account unused for 91 days is removed"
    assert (home / "password").exists()
    assert client("login", addr, password)["ok"], "the account itself stays usable"


def test_a_mailbox_crossing_the_quota_warning_loses_its_oldest_mail_not_new_mail(client, account):
    """Dovecot's count quota warns at 75 % (the lab's max_mailbox_size is 4M) and runs
    chatmail-quota-expire, which deletes the oldest messages down to 70 %."""
    alice, alice_pw = account("relay1.test")
    bob, bob_pw = account("relay2.test")
    home = relay_file("relay1", f"{MAILBOXES}/{alice}")
    old = int(time.time()) - 10 * 86400
    for i, name in enumerate(("oldest", "older")):
        size = 1_200_000
        path = home / "cur" / f"{old + i}.M{i}P1.{name},S={size}:2,S"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"From: x@relay1.test\r\nSubject: filler\r\n\r\n" + b"x" * (size - 40))
        os.utime(path, (old + i, old + i))
    labmod.host_run(RELAY1, ["chown", "-R", "vmail:vmail", f"{MAILBOXES}/{alice}"])
    labmod.host_run(RELAY1, ["doveadm", "quota", "recalc", "-u", alice])
    sent = client("send", bob, bob_pw, "--to", alice, "--pad", "600000")
    assert sent["ok"], sent
    assert client("wait", alice, alice_pw, "--token", sent["token"])["ok"], "the new message is delivered"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(p.name.split(".", 2)[2].startswith("oldest,") for p in (home / "cur").iterdir()):
        time.sleep(0.2)
    names = sorted(p.name.split(".", 2)[2].split(",")[0] for p in (home / "cur").iterdir())
    assert "oldest" not in names, names
    r = labmod.host_run(RELAY1, ["doveadm", "quota", "get", "-u", alice], capture=True)
    print(f"after the quota warning: cur/ holds {names}\n{r.stdout.strip()}")


def test_the_app_version_index_is_offered_as_server_metadata(client, account):
    addr, password = account("relay1.test")
    r = client("metadata", addr, password, "--key", "/shared/vendor/deltachat/appversions")
    assert json.loads(r["value"]) == labmod.APPVERSIONS
    maxrcpt = client("metadata", addr, password, "--key", "/shared/vendor/deltachat/maxsmtprecipients")
    assert maxrcpt["value"] == "1000"
