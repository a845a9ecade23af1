"""docs/migration.md, proven: a relay state in the reference relay's layout (password files
made with `openssl passwd -6`, maildirs with gzip-compressed mail, a DKIM key under
/etc/dkimkeys) is brought into relay1 by the document's steps. Then the old accounts log in
with their old passwords and read their old mail, get new mail from relay2, and relay2
accepts relay1's mail only once DNS publishes the migrated key, i.e. it verifies the
signature with that key. Afterwards relay1 gets its own key back and the accounts go."""

from __future__ import annotations

import calendar
import gzip
import os
import secrets
import subprocess
import time
from pathlib import Path

from chatmaild.dnszone import dkim_txt_value

from conftest import labmod, relay_file, wait_for_journal
from hosts import write

RELAY = labmod.BY_NAME["relay1"]
DOMAIN = "relay1.test"
OLD = "/root/reference-relay"  # the old server's files, as copied over (rsync) to the new host


def sh(script: str) -> str:
    return labmod.host_run(RELAY, ["sh", "-ec", script], capture=True).stdout


def reference_relay(root: Path, accounts: dict[str, str], tokens: dict[str, str]) -> None:
    """The reference relay's files: /home/vmail/mail/<domain>/<addr>/{password,
    enforceE2EEincoming,cur/...} with gzip-compressed messages, and /etc/dkimkeys."""
    today = calendar.timegm(time.gmtime()[:3] + (0, 0, 0))  # the last-login day, as the old relay keeps it
    for addr, password in accounts.items():
        home = root / "home/vmail/mail" / DOMAIN / addr
        for sub in ("cur", "new", "tmp"):
            (home / sub).mkdir(parents=True)
        crypt = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password, capture_output=True,
                               text=True, check=True).stdout.strip()
        (home / "password").write_text("{SHA512-CRYPT}" + crypt)
        (home / "enforceE2EEincoming").write_text("")
        token = tokens[addr]
        message = (f"From: friend@relay2.test\r\nTo: {addr}\r\nSubject: [...]\r\n"
                   f"Message-ID: <{token}@relay2.test>\r\nDate: Mon, 2 Nov 2026 10:00:00 +0000\r\n"
                   f"\r\nold mail {token}\r\n").encode()
        name = f"1793613600.M1P{secrets.randbelow(99999)}.oldrelay,S={len(message)}:2,S"
        (home / "cur" / name).write_bytes(gzip.compress(message))
        os.utime(home / "password", (today, today))
    dkim = root / "etc/dkimkeys"
    dkim.mkdir(parents=True)
    subprocess.run(["openssl", "genrsa", "-out", str(dkim / "opendkim.private"), "2048"], check=True,
                   capture_output=True)


def publish_relay_zones_and_forget_cached_records() -> None:
    labmod.publish_zone(labmod.relay_zones())
    for relay in labmod.RELAYS:
        labmod.host_run(relay, ["systemctl", "restart", "unbound.service"])
    for relay in labmod.RELAYS:
        deadline = time.monotonic() + 30
        while labmod.host_run(relay, ["getent", "hosts", DOMAIN], check=False, capture=True).returncode:
            assert time.monotonic() < deadline, f"{relay.name}: unbound does not answer after a restart"
            time.sleep(0.2)


def bounced(token_addr: str, since: str) -> bool:
    out = labmod.host_run(RELAY, ["journalctl", "-u", "postfix.service", "--since", since, "-o", "cat", "--no-pager"],
                          capture=True).stdout
    return any(f"to=<{token_addr}>" in line and "status=bounced" in line for line in out.splitlines())


def test_a_reference_relay_migrated_by_the_documented_steps_keeps_accounts_mail_and_dkim_key(client, account):
    paths = labmod.paths("relay1")
    accounts = {f"{secrets.token_hex(5)[:9]}@{DOMAIN}": "old" + secrets.token_urlsafe(10) for _ in range(2)}
    tokens = {addr: secrets.token_hex(6) for addr in accounts}
    reference_relay(relay_file("relay1", OLD), accounts, tokens)
    own_key = (labmod.STATE / "ca" / f"{DOMAIN}.dkim.key").read_text()
    migrated_key = relay_file("relay1", f"{OLD}/etc/dkimkeys/opendkim.private").read_bytes()
    bob, bob_pw = account("relay2.test")
    try:
        # docs/migration.md, step 2: the mail directory, owned by the mail user.
        sh(f"cp -a {OLD}/home/vmail/mail/{DOMAIN}/. {paths['mailboxesDir']}/\n"
           f"chown -R {paths['vmailUser']}:{paths['vmailUser']} {paths['mailboxesDir']}")
        # Step 3: the DKIM key under the same selector (NixOS: dkim.keyFile, dkim.selector).
        sh(f"install -m 0600 -o {paths['dkimUser']} -g {paths['dkimUser']} {OLD}/etc/dkimkeys/opendkim.private "
           f"{paths['dkimKeyFile']}\nsystemctl restart opendkim.service")
        assert dkim_txt_value(migrated_key)[:200] in labmod.host_run(RELAY, ["chatmail", "dns"], capture=True).stdout

        for addr, password in accounts.items():
            login = client("login", addr, password)
            assert login["ok"], login
            old = client("wait", addr, password, "--token", tokens[addr], "--timeout", "5")
            assert old["ok"], old
            assert f"old mail {tokens[addr]}" in old["message"]
            assert client("login", addr, "not-" + password)["ok"] is False
        alice, alice_pw = next(iter(accounts.items()))

        # Before DNS has the migrated key, relay2 refuses what relay1 signs with it.
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        refused = client("send", alice, alice_pw, "--to", bob)
        assert refused["ok"], refused
        deadline = time.monotonic() + 60
        while not bounced(bob, since):
            assert time.monotonic() < deadline, "relay2 did not refuse mail signed with a key DNS does not have"
            time.sleep(0.5)

        # Step 5: publish what `chatmail dns` prints (the DKIM record is the migrated key's).
        publish_relay_zones_and_forget_cached_records()
        check = labmod.host_run(RELAY, ["chatmail", "dns", "--check"], check=False, capture=True)
        assert check.returncode == 0, check.stdout

        sent = client("send", alice, alice_pw, "--to", bob)
        assert sent["ok"], sent
        assert client("wait", bob, bob_pw, "--token", sent["token"], "--timeout", "60")["ok"]
        wait_for_journal("relay1", "opendkim.service", "DKIM-Signature field added")
        reply = client("send", bob, bob_pw, "--to", alice)
        assert reply["ok"], reply
        assert client("wait", alice, alice_pw, "--token", reply["token"], "--timeout", "60")["ok"]
        print(f"migrated {len(accounts)} accounts: old passwords and gzip-compressed old mail work, mail from "
              "relay2 arrives, and relay2 accepts relay1's mail only once DNS has the migrated DKIM key")
    finally:
        write(labmod.merged(RELAY), paths["dkimKeyFile"], own_key, 0o600)
        sh(f"chown {paths['dkimUser']}: {paths['dkimKeyFile']}\nsystemctl restart opendkim.service\nrm -rf {OLD}")
        for addr in accounts:
            labmod.host_run(RELAY, ["chatmail", "accounts", "delete", addr, "--yes"], check=False, capture=True)
        publish_relay_zones_and_forget_cached_records()
    assert labmod.host_run(RELAY, ["chatmail", "dns", "--check"], check=False, capture=True).returncode == 0
