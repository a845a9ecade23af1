"""Faults while mail flows: filters killed, a peer relay gone for two minutes, Dovecot
restarted, the push path broken, a mailbox's disk full. Each scenario is bounded in time and
count and prints sent / accepted / delivered / lost / duplicated; nothing a client was told
is accepted (250) may be lost, and nothing may arrive twice.

A filter killed after Postfix's reinjection listener queued a message but before the filter
passed that 250 on leaves its client with a 4xx or a broken session, and the client sends the
message again. A before-queue proxy cannot make those two replies one, so the second copy is
dropped where it is stored: Dovecot's LMTP runs dedupe.sieve, which keeps one message per
Message-ID and envelope sender a day. The kill tests print how many resends there were and
require that each message is in the mailbox exactly once."""

from __future__ import annotations

import json
import os
import time

from conftest import labmod, relay_file
from faults import Burst, figures, mailbox_counts, settle, wait_until

RELAY1, RELAY2 = labmod.BY_NAME["relay1"], labmod.BY_NAME["relay2"]


def systemctl(relay: str, *args: str) -> str:
    return labmod.host_run(labmod.BY_NAME[relay], ["systemctl", *args], capture=True).stdout.strip()


def show(relay: str, unit: str, prop: str) -> str:
    return systemctl(relay, "show", unit, "-p", prop, "--value")


def restarted(relay: str, unit: str, restarts_before: int) -> None:
    """systemd brings a killed unit back (Restart=always, after RestartSec)."""
    wait_until(lambda: int(show(relay, unit, "NRestarts")) == restarts_before + 1
               and show(relay, unit, "ActiveState") == "active", 60, 0.5, f"{unit} restarted")


def dropped(relay: str, since: int) -> int:
    """Copies that dedupe.sieve dropped on a relay since a time: resends of a message stored
    already (the count shows how often a kill hit the moment between the two 250s)."""
    out = labmod.host_run(labmod.BY_NAME[relay], ["journalctl", "-u", "dovecot.service", "-o", "cat", "--no-pager",
                                                  "-q", f"--since=@{since - 1}"], capture=True).stdout
    return out.count("discard action")


def senders(account, relay: str, n: int) -> list[tuple[str, str]]:
    return [account(relay) for _ in range(n)]


def test_sigkill_of_the_outgoing_filter_during_200_messages_loses_and_doubles_nothing(account):
    accounts = senders(account, "relay1.test", 20)
    bob, _ = account("relay2.test")
    restarts = int(show("relay1", "filtermail.service", "NRestarts"))
    started = int(time.time())
    burst = Burst(bob, accounts, 200, "okill")
    burst.wait_progress(60)
    systemctl("relay1", "kill", "--signal=KILL", "filtermail.service")
    run = burst.result()
    restarted("relay1", "filtermail.service", restarts)
    settle()
    f = figures("outgoing filtermail SIGKILLed during 200 messages", run, mailbox_counts("relay2", bob, "okill"))
    print(f"resent copies dropped when stored: {dropped('relay2', started)}")
    assert (f.accepted, f.lost) == (200, 0)
    assert f.delivered == 200
    assert f.duplicated == 0


def test_two_sigkills_of_the_outgoing_filter_during_400_kb_messages_lose_and_double_nothing(account):
    """Large messages widen the moment between Postfix's 250 to the filter and the filter's 250
    to the client (where the reference relay's filter duplicated 2 of 2 tries). 30 messages
    of 418 KB to five recipients, so that no mailbox nears the lab's 4 MB quota."""
    runs = []
    started = int(time.time())
    for i in range(5):
        bob, _ = account("relay2.test")
        runs.append((bob, f"big{i}", Burst(bob, senders(account, "relay1.test", 2), 6, f"big{i}", pad=300_000)))
    restarts = int(show("relay1", "filtermail.service", "NRestarts"))
    for n, at in enumerate((8, 20)):
        wait_until(lambda: sum(b.done() for _, _, b in runs) >= at, 180, 0.1, f"{at} messages sent")
        systemctl("relay1", "kill", "--signal=KILL", "filtermail.service")
        restarted("relay1", "filtermail.service", restarts + n)
    results = [(bob, prefix, burst.result()) for bob, prefix, burst in runs]
    settle()
    total = [figures(f"to {prefix}", run, mailbox_counts("relay2", bob, prefix)) for bob, prefix, run in results]
    sums = [sum(getattr(f, k) for f in total) for k in ("sent", "accepted", "delivered", "lost", "duplicated",
                                                         "temporary")]
    print(f"FAULT outgoing filtermail SIGKILLed twice during 30 messages of 418 KB: sent {sums[0]} / accepted "
          f"{sums[1]} / delivered {sums[2]} / lost {sums[3]} / duplicated {sums[4]} (4xx or broken sessions, "
          f"resent: {sums[5]}); resent copies dropped when stored: {dropped('relay2', started)}")
    assert sums[:5] == [30, 30, 30, 0, 0]


def test_sigkill_of_the_incoming_filter_while_a_peer_delivers_is_retried_by_the_peer(account):
    accounts = senders(account, "relay1.test", 10)
    bob, _ = account("relay2.test")
    restarts = int(show("relay2", "filtermail-incoming.service", "NRestarts"))
    burst = Burst(bob, accounts, 100, "ikill")
    # Kill once the peer's deliveries are under way.
    wait_until(lambda: sum(mailbox_counts("relay2", bob, "ikill").values()) >= 20, 120, 0.2, "20 deliveries")
    killed_at = int(time.time())
    systemctl("relay2", "kill", "--signal=KILL", "filtermail-incoming.service")
    run = burst.result()
    restarted("relay2", "filtermail-incoming.service", restarts)
    took = settle()
    f = figures("incoming filtermail SIGKILLed while relay1 delivers 100 messages", run,
                mailbox_counts("relay2", bob, "ikill"))
    print(f"relay1's queue was empty {took:.0f} s after the last submission (its Postfix retried)")
    assert (f.accepted, f.delivered, f.lost) == (100, 100, 0)
    # Here the resending client is relay1's Postfix: each of its retries to bob is a deferral.
    deferred = [line for line in labmod.host_run(
        RELAY1, ["journalctl", "--no-pager", "-o", "cat", f"--since=@{killed_at - 1}", "-g", "status=deferred"],
        capture=True, check=False).stdout.splitlines() if bob in line]
    print(f"relay1 deferred {len(deferred)} deliveries to bob after the kill; resent copies dropped when "
          f"stored: {dropped('relay2', killed_at)}")
    assert f.duplicated == 0


def test_a_message_handed_over_twice_is_stored_once_but_another_senders_same_message_id_is_not_dropped(account):
    """What a client does after it lost a 250: the same message again. The second copy gets
    its 250 (the sender must not retry for ever) and is not stored; a message from another
    sender that happens to carry the same Message-ID is stored."""
    alice, alice_pw = account("relay1.test")
    carol, carol_pw = account("relay1.test")
    bob, _ = account("relay2.test")
    started = int(time.time())
    for sender in ((alice, alice_pw), (alice, alice_pw), (carol, carol_pw)):
        run = Burst(bob, [sender], 1, "twice").result()
        assert run["accepted"] == [0], run
    settle()
    counts = mailbox_counts("relay2", bob, "twice")
    print(f"3 handed over with one Message-ID (alice twice, carol once): {counts['twice-0']} stored")
    assert counts == {"twice-0": 2}
    # The script compiles and runs without a complaint (its binary is saved where LMTP may write).
    lines = labmod.host_run(RELAY2, ["journalctl", "-u", "dovecot.service", "-o", "cat", "--no-pager", "-q",
                                     f"--since=@{started - 1}"], capture=True).stdout.splitlines()
    # Only bob's: the kill tests before this one leave discards of their own in the journal.
    assert sum("discard action" in line and f"lmtp({bob})" in line for line in lines) == 1
    complaints = [line for line in lines if "sieve" in line.lower() and any(w in line.lower() for w in ("error", "warning", "failed"))]
    assert complaints == []


def link(relay: str, state: str) -> None:
    labmod.run(["ip", "-n", labmod.SWITCH, "link", "set", f"v-{relay}", state])


def test_a_peer_down_for_two_minutes_gets_all_50_messages_once_within_a_minute_of_its_return(account):
    accounts = senders(account, "relay1.test", 5)
    bob, _ = account("relay2.test")
    link("relay2", "down")
    down_at = time.monotonic()
    try:
        run = Burst(bob, accounts, 50, "down").result()
        assert len(run["accepted"]) == 50, run
        wait_until(lambda: labmod.host_run(RELAY1, ["postqueue", "-p"], capture=True).stdout.count("relay2.test")
                   >= 50, 60, 1, "50 messages deferred on relay1")
        assert not mailbox_counts("relay2", bob, "down")
        time.sleep(max(0.0, 120 - (time.monotonic() - down_at)))  # the outage itself lasts two minutes
    finally:
        link("relay2", "up")
    back = wait_until(lambda: len(mailbox_counts("relay2", bob, "down")) == 50, 90, 1, "all 50 delivered")
    settle()
    f = figures("relay2 down for two minutes while 50 messages are sent", run, mailbox_counts("relay2", bob, "down"))
    print(f"relay2 back: all 50 delivered {back:.0f} s later, without a flush")
    assert back <= 60
    assert (f.delivered, f.lost, f.duplicated) == (50, 0, 0)


def test_a_dovecot_restart_while_mail_arrives_loses_and_doubles_nothing(account):
    accounts = senders(account, "relay2.test", 5)
    alice, _ = account("relay1.test")
    burst = Burst(alice, accounts, 50, "dove")
    wait_until(lambda: sum(mailbox_counts("relay1", alice, "dove").values()) >= 10, 120, 0.2, "10 deliveries")
    pid = show("relay1", "dovecot.service", "MainPID")
    systemctl("relay1", "restart", "dovecot.service")
    assert show("relay1", "dovecot.service", "MainPID") != pid
    run = burst.result()
    settle()
    f = figures("Dovecot restarted on relay1 while 50 messages arrive", run, mailbox_counts("relay1", alice, "dove"))
    assert (f.accepted, f.delivered, f.lost, f.duplicated) == (50, 50, 0, 0)


def test_pushes_survive_the_proxy_down_and_a_sigkill_of_the_metadata_daemon_exactly_once_each(client, account):
    from test_services import push_records

    alice, alice_pw = account("relay1.test")
    bob, bob_pw = account("relay1.test")
    carol, carol_pw = account("relay1.test")  # a second sender: ten each stay within the rate limit
    started = int(time.time())
    token = f"token-{os.urandom(4).hex()}"
    assert client("metadata", alice, alice_pw, "--mailbox", "INBOX", "--key", "/private/devicetoken",
                  "--value", token)["ok"]
    restarts = int(show("relay1", "chatmail-metadata.service", "NRestarts"))
    labmod.stop_push_proxy()
    try:
        first = client("send", bob, bob_pw, "--to", alice, "--count", "10")
        assert all(r["ok"] for r in first["all"]), first
        systemctl("relay1", "kill", "--signal=KILL", "chatmail-metadata.service")
        # Delivered while the daemon is dead: Dovecot's requests wait on systemd's socket.
        second = client("send", carol, carol_pw, "--to", alice, "--count", "10")
        assert all(r["ok"] for r in second["all"]), second
        restarted("relay1", "chatmail-metadata.service", restarts)
        assert show("relay1", "chatmail-metadata.socket", "ActiveState") == "active"
        queue = relay_file("relay1", f"{labmod.paths('relay1')['mailboxesDir']}/pending_notifications")
        wait_until(lambda: len(list(queue.iterdir())) == 20, 60, 0.2, "20 pending pushes")
    finally:
        labmod.start_push_proxy()
    wait_until(lambda: len([r for r in push_records() if r["token"] == token]) >= 20, 60, 0.2, "20 pushes")
    wait_until(lambda: not list(queue.iterdir()), 30, 0.2, "no pending push")
    pushes = len([r for r in push_records() if r["token"] == token])
    lost = [line for line in labmod.host_run(RELAY1, ["journalctl", "-u", "dovecot.service", "-q", "--no-pager",
                                                      "--since", f"@{started}"], capture=True).stdout.splitlines()
            if "metadata.socket" in line and ("refused" in line.lower() or "failed" in line.lower())]
    print(f"FAULT push: proxy down, 20 deliveries (10 while chatmail-metadata was SIGKILLed), restart, proxy "
          f"back: sent 20 / pushes {pushes} / lost {max(0, 20 - pushes)} / duplicated {max(0, pushes - 20)}")
    assert pushes == 20
    assert lost == [], lost


def test_a_full_mailbox_disk_defers_mail_with_4xx_and_delivers_it_once_space_is_freed(account):
    """The recipient's maildir sits on a 256 KiB file system (a tmpfs mounted inside relay1):
    once it is full, Dovecot's LMTP answers 4xx, Postfix keeps the mail; after the file
    system is enlarged the queue delivers it, each message once."""
    accounts = senders(account, "relay1.test", 3)
    alice, alice_pw = account("relay1.test")
    home = f"{labmod.paths('relay1')['mailboxesDir']}/{alice}"
    save = f"/root/{alice}.saved"
    sh = ["sh", "-ec"]
    labmod.host_run(RELAY1, [*sh, f"cp -a '{home}' '{save}'; "
                             f"mount -t tmpfs -o size=256k,mode=0700,uid=vmail,gid=vmail chatmail-full '{home}'; "
                             f"cp -a '{save}/.' '{home}/'"])
    try:
        run = Burst(alice, accounts, 24, "full", pad=24000).result()
        assert len(run["accepted"]) == 24, run
        wait_until(lambda: "4." in labmod.host_run(RELAY1, ["postqueue", "-p"], capture=True).stdout, 120, 1,
                   "mail deferred with a 4xx")
        queued = labmod.host_run(RELAY1, ["postqueue", "-j"], capture=True).stdout.splitlines()
        reasons = {r["delay_reason"] for line in queued for r in json.loads(line)["recipients"] if "delay_reason" in r}
        delivered_while_full = len(mailbox_counts("relay1", alice, "full", inside=True))
        print(f"disk full: {delivered_while_full} delivered, {len(queued)} kept in the queue; Postfix's "
              f"reason: {sorted(reasons)[0]}")
        assert queued and reasons and delivered_while_full < 24
        assert all(" 4." in reason or reason.startswith("4") for reason in reasons), reasons
        labmod.host_run(RELAY1, ["mount", "-o", "remount,size=64m", home])
        freed = wait_until(lambda: len(mailbox_counts("relay1", alice, "full", inside=True)) == 24, 120, 1,
                           "all 24 delivered")
        settle(("relay1",))
        counts = mailbox_counts("relay1", alice, "full", inside=True)
    finally:
        labmod.host_run(RELAY1, [*sh, f"umount -l '{home}'; rm -rf '{save}'"], check=False)
    f = figures("recipient's disk full on relay1, then freed", run, counts)
    print(f"after the space was freed all were delivered within {freed:.0f} s")
    assert (f.delivered, f.lost, f.duplicated) == (24, 0, 0)


def test_hostile_port_25_peers_do_not_keep_a_normal_encrypted_delivery_from_being_served(client, account):
    import subprocess
    import sys

    from conftest import HERE

    alice, alice_pw = account("relay1.test")
    bob, bob_pw = account("relay2.test")
    hold = 40
    cmd = labmod.in_host(labmod.CLIENT, [sys.executable, str(HERE / "hostilepeer.py"), "--host", "relay1.test",
                                         "--cafile", str(labmod.STATE / "ca/ca.pem"), "--idle", "200",
                                         "--drip", "5", "--hold", str(hold), "--oversize", str(32 * 1024 * 1024)])
    hostile = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)  # the 200 idle connections and the drips are open
        started = time.monotonic()
        sent = client("send", bob, bob_pw, "--to", alice)
        assert sent["ok"], sent
        got = client("wait", alice, alice_pw, "--token", sent["token"], "--timeout", "60")
        took = time.monotonic() - started
    finally:
        out, err = hostile.communicate(timeout=hold + 180)
    seen = json.loads(out)
    print(f"hostile peers on relay1:25: {seen}")
    print(f"FAULT hostile peers: a normal encrypted delivery relay2 -> relay1 took {took:.1f} s meanwhile")
    assert got["ok"], got
    assert took < 45
    assert seen["idle_opened"] + seen["idle_refused"] == 200
    assert seen["oversize"][0] == 552, seen["oversize"]
