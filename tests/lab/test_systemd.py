"""The relays run what NixOS deploys: each boots systemd, which runs the chatmaild units
written from config/units.nix (sandbox, restarts, timers, one-shots) and Debian's units for
Postfix, Dovecot, nginx, OpenDKIM, unbound and coturn with the module's configuration."""

from __future__ import annotations

import re
import time

import render
from conftest import journal, labmod, relay_file

MAX_EXPOSURE = 2.0


def systemctl(relay: str, *args: str, check: bool = True) -> str:
    return labmod.host_run(labmod.BY_NAME[relay], ["systemctl", *args], check=check, capture=True).stdout.strip()


def show(relay: str, unit: str, prop: str) -> str:
    return systemctl(relay, "show", unit, "-p", prop, "--value")


def chatmaild_units() -> dict[str, dict]:
    """units.nix's services that run chatmaild (the secret-making one-shots run shell)."""
    return {name: unit for name, unit in labmod.relay_config()["units"]["services"].items() if "script" not in unit}


def test_both_relays_boot_to_running_with_no_failed_unit(lab):
    sockets = labmod.relay_config()["units"]["sockets"]
    # A socket-activated daemon runs only between its first request and its idle exit; its
    # socket is what must be up (a daemon that failed shows in --failed).
    daemons = [f"{name}.service" for name, unit in chatmaild_units().items()
               if "timerConfig" not in unit and name not in sockets]
    on_demand = [f"{name}.socket" for name in sockets]
    services = ["postfix.service", "dovecot.service", "nginx.service", "opendkim.service", "unbound.service",
                "coturn.service"]
    for relay in labmod.RELAYS:
        assert systemctl(relay.name, "is-system-running", check=False) == "running"
        assert systemctl(relay.name, "--failed", "--no-legend", "--plain") == ""
        units = daemons + on_demand + services
        states = systemctl(relay.name, "is-active", *units).split()
        assert states == ["active"] * len(units), dict(zip(units, states))
        print(f"{relay.name}: systemd running; active: {', '.join(units)}")


def test_every_loaded_chatmaild_unit_scores_at_most_two_in_systemd_analyze_security(lab):
    for name in sorted(chatmaild_units()):
        r = labmod.host_run(labmod.BY_NAME["relay1"], ["systemd-analyze", "security", "--no-pager", f"{name}.service"],
                            check=False, capture=True)
        match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
        assert match, r.stdout[-2000:] + r.stderr[-2000:]
        print(f"relay1 {name + '.service':30} exposure {match.group(1)}")
        assert float(match.group(1)) <= MAX_EXPOSURE, r.stdout


def test_a_killed_filtermail_is_restarted_and_mail_sent_across_the_kill_arrives_exactly_once(client, account):
    alice, alice_pw = account("relay1.test")
    bob, bob_pw = account("relay2.test")
    pid, restarts = show("relay1", "filtermail.service", "MainPID"), int(show("relay1", "filtermail.service", "NRestarts"))
    tokens, deferred = [], 0

    def send() -> None:
        nonlocal deferred
        deadline = time.monotonic() + 40
        while True:
            r = client("send", alice, alice_pw, "--to", bob)
            if r["ok"]:
                tokens.append(r["token"])
                return
            assert r["code"] == 0 or 400 <= r["code"] < 500, r  # temporary only, while the filter is down
            assert time.monotonic() < deadline, r
            deferred += 1
            time.sleep(0.5)

    send()
    systemctl("relay1", "kill", "--signal=KILL", "filtermail.service")
    for _ in range(5):
        send()
        time.sleep(0.5)
    assert show("relay1", "filtermail.service", "ActiveState") == "active"
    assert show("relay1", "filtermail.service", "MainPID") != pid
    assert int(show("relay1", "filtermail.service", "NRestarts")) == restarts + 1

    for token in tokens:
        assert client("wait", bob, bob_pw, "--token", token)["ok"], token
    home = relay_file("relay2", f"{labmod.paths('relay2')['mailboxesDir']}/{bob}")
    time.sleep(1)  # a duplicate would arrive right behind the first copy
    mails = [p.read_bytes() for sub in ("new", "cur") for p in (home / sub).iterdir()]
    counts = {t: sum(f"<{t}@".encode() in m for m in mails) for t in tokens}
    assert counts == {t: 1 for t in tokens}, counts
    print(f"filtermail SIGKILLed: systemd restarted it (pid {pid} -> {show('relay1', 'filtermail.service', 'MainPID')}); "
          f"{len(tokens)} messages sent across the kill ({deferred} deferrals with 4xx, retried), each delivered once")


def test_the_daily_jobs_have_timers_and_expiry_runs_in_its_sandbox(lab):
    timers = systemctl("relay1", "list-timers", "--all", "--no-legend", "--plain")
    for name in ("chatmail-expire.timer", "chatmail-fsreport.timer"):
        assert name in timers, timers
    for unit in ("chatmail-expire.service", "chatmail-fsreport.service"):
        systemctl("relay1", "start", unit)
        assert show("relay1", unit, "Result") == "success"
        assert show("relay1", unit, "ExecMainStatus") == "0"
    print(f"relay1 timers:\n{timers}\nchatmail-expire and chatmail-fsreport ran to success when started")


def test_opendkim_restarts_after_a_crash_and_once_a_day(lab):
    for relay in labmod.RELAYS:
        assert show(relay.name, "opendkim.service", "Restart") == "always"
        assert show(relay.name, "opendkim.service", "RuntimeMaxUSec") == "1d"


def test_a_relay_given_its_dkim_key_generates_no_other(lab):
    for relay in labmod.RELAYS:
        assert show(relay.name, "chatmail-dkim-key.service", "LoadState") == "not-found"
        logs = "\n".join(journal(relay.name, "opendkim.service"))
        assert "Generated" not in logs and "opendkim-genkey" not in logs


def test_postfix_runs_nixos_master_cf_and_logs_to_the_journal(lab):
    services = labmod.host_run(labmod.BY_NAME["relay1"], ["postconf", "-M"], capture=True).stdout.splitlines()
    got = sorted((line.split()[0], line.split()[1]) for line in services)
    master = render.merge_master(labmod.relay_config()["postfix"]["master"])
    expected = sorted((e.get("name", attr), e.get("type", "unix")) for attr, e in master.items())
    assert got == expected
    assert not {"postlog", "tlsproxy", "postscreen"} & {name for name, _ in got}
    assert any("postfix/master" in line for line in journal("relay1", "postfix.service"))


def test_the_journal_is_kept_in_memory_for_a_short_time(lab):
    journald = labmod.relay_config()["journald"]
    assert journald == {"Storage": "volatile", "MaxRetentionSec": "3d"}
    conf = labmod.host_run(labmod.BY_NAME["relay1"], ["systemd-analyze", "cat-config", "systemd/journald.conf"],
                           capture=True).stdout
    assert "Storage=volatile" in conf and "MaxRetentionSec=3d" in conf
    disk = relay_file("relay1", "/var/log/journal")
    assert not disk.exists() or not any(disk.rglob("*.journal"))
    files = labmod.host_run(labmod.BY_NAME["relay1"], ["find", "/run/log/journal", "-name", "*.journal"],
                            capture=True).stdout
    assert files.strip(), "the journal lives in /run"
