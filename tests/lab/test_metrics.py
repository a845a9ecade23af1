"""Metrics: deliveries and refusals across the two relays move the counters by exactly their
number, the textfile `chatmail metrics` writes (started as its systemd unit) says so, and
the real node exporter, reading that directory as NixOS configures it, serves the same."""

from __future__ import annotations

import re
import secrets
import time

from conftest import labmod, relay_file

from chatmaild.metrics import parse_text

RELAYS = ("relay1", "relay2")
EXPORTER = "http://127.0.0.1:9100/metrics"
SCRAPE = f"import urllib.request; print(urllib.request.urlopen({EXPORTER!r}, timeout=10).read().decode())"


def textfile(relay: str) -> dict:
    """Run the metrics unit as its timer would, then read what it wrote."""
    labmod.host_run(labmod.BY_NAME[relay], ["systemctl", "start", "chatmail-metrics.service"])
    path = f"{labmod.paths(relay)['metricsTextfileDir']}/chatmail.prom"
    return parse_text(relay_file(relay, path).read_text())


def counters(values: dict) -> dict:
    return {key: value for key, value in values.items() if key[0].endswith("_total")}


def moved(before: dict, after: dict) -> dict:
    """The series whose value changed, with the change."""
    return {key: after.get(key, 0) - before.get(key, 0) for key in after.keys() | before.keys()
            if after.get(key, 0) != before.get(key, 0)}


def wait_for(relays_expected: dict[str, dict], before: dict[str, dict], timeout: float = 30) -> dict[str, dict]:
    """Scrape until each relay's counters moved by at least the expected amounts (a daemon
    writes its counts a moment after it replied), then once more after a pause, so that a
    late extra count shows too."""
    deadline = time.monotonic() + timeout
    while True:
        now = {r: textfile(r) for r in relays_expected}
        reached = all(moved(counters(before[r]), counters(now[r])).get(k, 0) >= v
                      for r, expected in relays_expected.items() for k, v in expected.items())
        if reached or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    time.sleep(2)
    return {r: textfile(r) for r in relays_expected}


def series(name: str, **labels: str) -> tuple:
    return name, tuple(sorted(labels.items()))


def message_bytes(relay: str, addr: str) -> tuple[int, int]:
    """Messages in an account's maildir (cur and new) and their bytes on disk."""
    home = relay_file(relay, f"{labmod.paths(relay)['mailboxesDir']}/{addr}")
    files = [p for sub in ("cur", "new") if (home / sub).is_dir() for p in (home / sub).iterdir()]
    return len(files), sum(p.stat().st_size for p in files)


def test_deliveries_and_refusals_move_the_counters_by_exactly_their_number(client, account):
    for r in RELAYS:
        state = labmod.host_run(labmod.BY_NAME[r], ["systemctl", "is-active", "chatmail-metrics.timer"],
                                check=False, capture=True).stdout.strip()
        assert state == "active", f"{r}: chatmail-metrics.timer is {state}"
    before = {r: textfile(r) for r in RELAYS}

    alice, alice_pw = account("relay1.test")
    bob, bob_pw = account("relay2.test")
    token = f"metrics-{secrets.token_hex(4)}"
    assert client("metadata", bob, bob_pw, "--mailbox", "INBOX", "--key", "/private/devicetoken",
                  "--value", token)["ok"]
    # Two encrypted messages relay1 -> relay2, each fetched by bob (and each one push to his device).
    for _ in range(2):
        sent = client("send", alice, alice_pw, "--to", bob)
        assert sent["ok"], sent
        assert client("wait", bob, bob_pw, "--token", sent["token"])["ok"]
    # Cleartext at relay1's submission, and from another server at relay2's port 25: 523 each.
    refused = client("send", alice, alice_pw, "--to", bob, "--cleartext")
    assert not refused["ok"] and refused["code"] == 523, refused
    refused = client("deliver", "--host", "relay2.test", "--from", "someone@example.test", "--to", bob, "--cleartext")
    assert not refused["ok"] and refused["code"] == 523, refused
    # Encrypted, but from an IP-literal address that is not the sender's: 554 at relay1's port 25.
    refused = client("deliver", "--host", "relay1.test", "--from", "peer@[10.77.0.99]", "--to", alice)
    assert not refused["ok"] and refused["code"] == 554, refused

    expected = {
        "relay1": {
            series("chatmail_accounts_created_total"): 1,
            series("chatmail_deliveries_accepted_total", direction="outgoing"): 2,
            series("chatmail_refusals_total", direction="outgoing", code="523"): 1,
            series("chatmail_refusals_total", direction="incoming", code="554"): 1,
        },
        "relay2": {
            series("chatmail_accounts_created_total"): 1,
            series("chatmail_deliveries_accepted_total", direction="incoming"): 2,
            series("chatmail_refusals_total", direction="incoming", code="523"): 1,
            series("chatmail_pushes_queued_total"): 2,
            series("chatmail_pushes_sent_total"): 2,
        },
    }
    after = wait_for(expected, before)
    for r in RELAYS:
        assert moved(counters(before[r]), counters(after[r])) == expected[r], r
        assert after[r][series("chatmail_stored_accounts")] - before[r][series("chatmail_stored_accounts")] == 1
        assert after[r][series("chatmail_pushes_pending")] == 0
    count, size = message_bytes("relay2", bob)
    assert count == 2
    for name, value in (("chatmail_stored_messages", 2), ("chatmail_stored_message_bytes", size)):
        assert after["relay2"][series(name)] - before["relay2"][series(name)] == value, name
    for r in RELAYS:
        print(f"{r}: " + ", ".join(f"{k[0]}{dict(k[1]) or ''} +{v:g}" for k, v in
                                   sorted(moved(before[r], after[r]).items())))

    # A daemon's restart does not reset what it counted.
    labmod.host_run(labmod.BY_NAME["relay1"], ["systemctl", "restart", "filtermail.service"])
    assert counters(textfile("relay1")) == counters(after["relay1"])


def test_the_node_exporter_serves_the_textfile_on_loopback_and_parses_it(lab):
    for r in RELAYS:
        host = labmod.BY_NAME[r]
        file_values = textfile(r)
        labmod.host_run(host, ["systemctl", "is-active", "--quiet", "prometheus-node-exporter.service"])
        text = labmod.host_run(host, ["python3", "-c", SCRAPE], capture=True).stdout
        # The collector reports a file it cannot parse with this gauge at 1.
        assert re.search(r"^node_textfile_scrape_error 0$", text, re.M), "the exporter could not parse chatmail.prom"
        scraped = parse_text("\n".join(line for line in text.splitlines()
                                       if line.startswith("chatmail_") or line.startswith("# ")
                                       and " chatmail_" in line))
        assert scraped == file_values, r
        # Only on loopback: the relay's own address gets no answer.
        probe = (f"import socket; s = socket.socket(); s.settimeout(3); "
                 f"print(s.connect_ex(({host.ip!r}, 9100)))")
        assert labmod.host_run(host, ["python3", "-c", probe], capture=True).stdout.strip() != "0"
        print(f"{r}: node exporter on 127.0.0.1:9100 serves {len(scraped)} chatmail series, "
              f"equal to chatmail.prom; {host.ip}:9100 refused")
