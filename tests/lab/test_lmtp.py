"""Dovecot's lmtp on a relay: deliveries are served by a process that is already running,
so none waits for one to start (tests/lab/bench_delivery.py shows what that wait costs)."""

from __future__ import annotations

import re
import time

from conftest import journal, labmod

RELAY1 = labmod.BY_NAME["relay1"]


def dovecot_lmtp_pids() -> set[str]:
    """PIDs (as the relay sees them) of Dovecot's lmtp processes; Postfix's lmtp client is
    another program with the same name."""
    r = labmod.host_run(RELAY1, ["pgrep", "-f", "^dovecot/lmtp"], check=False, capture=True)
    return set(r.stdout.split())


def serving_pids(addr: str, count: int, timeout: float = 10) -> list[str]:
    """The lmtp processes that saved the first `count` mails for addr, from Dovecot's log
    lines `lmtp(ADDR)<PID><SESSION>: msgid=...: saved mail to INBOX` (which may reach the
    journal a moment after the mail reaches the mailbox)."""
    pattern = re.compile(r"lmtp\(" + re.escape(addr) + r"\)<(\d+)><[^>]*>: .*saved mail to")
    deadline = time.monotonic() + timeout
    while True:
        pids = [m.group(1) for line in journal("relay1", "dovecot") if (m := pattern.search(line))]
        if len(pids) >= count or time.monotonic() > deadline:
            assert len(pids) == count, f"{count} deliveries to {addr} expected in Dovecot's log: {pids}"
            return pids
        time.sleep(0.2)


def test_each_delivery_is_served_by_an_lmtp_process_that_was_running_before_it_was_sent(client, account):
    alice, alice_pw = account(RELAY1.domain)
    bob, bob_pw = account(RELAY1.domain)
    for n in (1, 2):
        ready = dovecot_lmtp_pids()
        assert ready, f"delivery {n}: no Dovecot lmtp process waits for it"
        sent = client("send", alice, alice_pw, "--to", bob)
        assert client("wait", bob, bob_pw, "--token", sent["token"])["ok"]
        served = serving_pids(bob, n)[-1]
        assert served in ready, f"delivery {n} was served by lmtp {served}, started after the send ({sorted(ready)})"
