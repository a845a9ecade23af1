"""The operator's `chatmail` command on the lab's relays, against the real DNS, systemd,
Postfix and Dovecot: the lab's DNS publishes what `chatmail dns` prints, `--check` sees
what is published and what is not, `status` sees every unit, and `accounts` changes what
Dovecot lets log in."""

from __future__ import annotations

import subprocess
import time

import fixtures
from conftest import labmod, relay_file


def chatmail(relay: str, *args: str) -> subprocess.CompletedProcess:
    return labmod.host_run(labmod.BY_NAME[relay], ["chatmail", *args], check=False, capture=True)


def restart_resolver(relay: str) -> None:
    """Restart the relay's unbound, so that the next lookups see the DNS host's zone and
    not what the resolver has cached; wait until it answers again."""
    host = labmod.BY_NAME[relay]
    labmod.host_run(host, ["systemctl", "restart", "unbound.service"])
    deadline = time.monotonic() + 30
    while labmod.host_run(host, ["getent", "hosts", host.domain or ""], check=False, capture=True).returncode:
        assert time.monotonic() < deadline, f"{relay}: unbound does not answer after a restart"
        time.sleep(0.2)


def published() -> str:
    return (labmod.merged(labmod.DNS) / labmod.ZONE_FILE.lstrip("/")).read_text()


def test_the_lab_dns_publishes_exactly_what_chatmail_dns_prints_on_each_relay(lab):
    zones = labmod.relay_zones()
    assert published() == fixtures.zone_text(zones)
    for relay in labmod.RELAYS:
        zone = zones[relay.domain]
        # The relay's own facts: its address, its DKIM key, the ACME account lego registered.
        assert f"{relay.domain}. " in zone and f" A     {relay.ip}\n" in zone, zone
        assert "opendkim._domainkey." in zone and "k=rsa" in zone
        accounts = relay_file(relay.name, "/var/lib/acme/.lego/accounts")
        assert "accounturi=https://acme.test:14000/" in zone, zone
        assert accounts.is_dir()
        print(f"{relay.name}: published {zone.count(' IN ')} records from `chatmail dns`")


def test_chatmail_dns_check_passes_on_each_relay(lab):
    for relay in labmod.RELAYS:
        r = chatmail(relay.name, "dns", "--check")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "records are published as expected" in r.stdout
        print(f"{relay.name}: {r.stdout.strip().splitlines()[-1]}")


def test_a_record_removed_from_dns_makes_check_fail_naming_it(lab):
    zones = labmod.relay_zones()
    name = "_mta-sts.relay1.test."
    lines = zones["relay1.test"].splitlines(keepends=True)
    kept = [line for line in lines if not line.startswith(name + " ")]
    assert len(kept) == len(lines) - 1
    try:
        labmod.publish_zone({**zones, "relay1.test": "".join(kept)})
        restart_resolver("relay1")
        r = chatmail("relay1", "dns", "--check")
        assert r.returncode == 1, r.stdout + r.stderr
        bad = r.stdout.split("missing or wrong:")[1]
        assert [line.split()[:2] for line in bad.strip().splitlines()] == [[name, "TXT"]], r.stdout
        row = next(line for line in r.stdout.splitlines() if line.startswith(f"{name} TXT"))
        assert row.split()[-1] == "MISSING", row
        print(r.stdout)
    finally:
        labmod.publish_zone(zones)
        restart_resolver("relay1")
    assert chatmail("relay1", "dns", "--check").returncode == 0


def test_chatmail_status_shows_every_unit_of_a_relay_active_and_exits_0(lab):
    units = ["postfix.service", "dovecot.service", "doveauth.service", "filtermail.service",
             "filtermail-incoming.service", "chatmail-metadata.socket", "chatmail-lastlogin.socket",
             "chatmail-newemail.socket", "chatmail-expire.timer", "chatmail-fsreport.timer",
             "opendkim.service", "nginx.service", "unbound.service", "coturn.service"]
    # Started by their sockets and gone when idle: either state is "ok".
    on_demand = ["chatmail-metadata.service", "chatmail-lastlogin.service", "chatmail-newemail.service"]
    for relay in labmod.RELAYS:
        r = chatmail(relay.name, "status")
        assert r.returncode == 0, r.stdout + r.stderr
        # "  ok postfix.service   active (running)"
        rows = {cols[1]: cols for cols in map(str.split, r.stdout.splitlines()) if len(cols) >= 3}
        for unit in units:
            assert unit in rows and rows[unit][0] == "ok" and rows[unit][2] == "active", (unit, r.stdout)
        for unit in on_demand:
            assert unit in rows and rows[unit][0] == "ok" and rows[unit][2] in ("active", "inactive"), (unit, r.stdout)
        print(f"{relay.name}:\n{r.stdout}")


def test_accounts_list_shows_an_account_with_its_mail(client, account):
    alice, alice_pw = account("relay2.test")
    bob, bob_pw = account("relay1.test")
    sent = client("send", alice, alice_pw, "--to", bob)
    assert sent["ok"], sent
    assert client("wait", bob, bob_pw, "--token", sent["token"])["ok"]
    r = chatmail("relay1", "accounts", "list")
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if line.startswith(bob + " "))
    day, size = row.split()[1:3]
    assert day == time.strftime("%Y-%m-%d", time.gmtime())
    assert size not in ("0B", "0.0B"), row
    count = chatmail("relay1", "accounts", "list", "--count")
    assert int(count.stdout) == len(r.stdout.splitlines()) - 1
    print(row)


def test_a_deleted_account_loses_its_mail_and_a_new_login_finds_an_empty_inbox(client, account):
    alice, alice_pw = account("relay2.test")
    bob, bob_pw = account("relay1.test")
    sent = client("send", alice, alice_pw, "--to", bob)
    assert client("wait", bob, bob_pw, "--token", sent["token"])["ok"]
    home = relay_file("relay1", f"{labmod.paths('relay1')['mailboxesDir']}/{bob}")
    assert home.is_dir()
    r = chatmail("relay1", "accounts", "delete", bob, "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not home.exists()
    assert bob not in chatmail("relay1", "accounts", "list").stdout
    # Not blocked: the next login creates the account anew, without the old mail.
    assert client("login", bob, bob_pw)["ok"]
    inbox = client("inbox", bob, bob_pw)
    assert inbox["messages"] == [], inbox
    print(r.stdout.strip())


def test_a_blocked_address_cannot_log_in_again_and_its_mail_is_gone(client, account):
    bob, bob_pw = account("relay1.test")
    home = relay_file("relay1", f"{labmod.paths('relay1')['mailboxesDir']}/{bob}")
    assert home.is_dir()
    r = chatmail("relay1", "accounts", "block", bob, "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        assert not home.exists()
        assert not client("login", bob, bob_pw)["ok"]
        assert not client("login", bob, "p-another-password")["ok"]
        assert not home.exists(), "a refused login created no account"
        print(r.stdout.strip())
    finally:
        assert chatmail("relay1", "accounts", "unblock", bob).returncode == 0
    assert client("login", bob, bob_pw)["ok"], "unblocked, the address can be created anew"
