#!/usr/bin/env python3
"""Two Delta Chat users on two relays open a webxdc app's realtime channel and exchange data.

Runs on the lab's client host (real Delta Chat cores through deltachat-rpc-client, as
dcdemo.py does). Alice (first relay) and Bob (second relay) Secure-Join, Alice sends a tiny
webxdc app, both join its realtime channel (each core sends an advertisement: an encrypted
message through the relays with its iroh node id and home relay, which it took from its
relay's IMAP METADATA), then data goes both ways over iroh until each side has every
payload, in order. The relays carry the advertisements as mail; the data itself goes over
iroh, directly or through the iroh relays.

Prints one JSON object: the timings of each step, what was sent and what arrived; exits
with status 3 (and "connected": false) when no data arrived within --connect-timeout.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

from deltachat_rpc_client import EventType

from dcdemo import Step, deltachat, new_credentials, transport

RESEND_EVERY = 0.5
# Exit status when the channel never came up (the JSON says so too).
NOT_CONNECTED = 3


def make_xdc(directory: Path) -> Path:
    """The smallest webxdc app: a manifest and a page that joins the realtime channel."""
    path = directory / "realtime-lab.xdc"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("manifest.toml", 'name = "realtime lab"\n')
        z.writestr("index.html", "<!doctype html><title>realtime lab</title>"
                   "<script>window.webxdc.joinRealtimeChannel().setListener(() => {});</script>\n")
    return path


def make_account(dc, domain: str, name: str):
    addr, password = new_credentials(domain)
    account = dc.add_account()
    account.set_config("displayname", name)
    account.set_config("webxdc_realtime_enabled", "1")
    account.add_or_update_transport(transport(addr, password))
    account.bring_online()
    return account, addr


class Inbox:
    """Every realtime payload one account receives for one app, collected by a thread so
    that no event is missed while the other side is being driven."""

    def __init__(self, account, msg_id: int):
        self.account, self.msg_id = account, msg_id
        self.payloads: list[bytes] = []
        self.arrived: list[float] = []
        self.cond = threading.Condition()
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop:
            try:
                event = self.account.wait_for_event()
            except Exception:  # the core has gone away: the scenario is over
                return
            if event.kind == EventType.WEBXDC_REALTIME_DATA and event.msg_id == self.msg_id:
                with self.cond:
                    self.payloads.append(bytes(event.data))
                    self.arrived.append(time.monotonic())
                    self.cond.notify_all()

    def wait_for(self, predicate, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self.payloads), timeout)


def first_contact(sender_msg, inbox: Inbox, tag: bytes, timeout: float) -> float | None:
    """Offer `tag` every RESEND_EVERY seconds until the other side has it; return the time
    it took (the channel is up in this direction), or None after `timeout` seconds."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        sender_msg.send_webxdc_realtime_data(tag)
        if inbox.wait_for(lambda got: tag in got, RESEND_EVERY):
            return round(time.monotonic() - started, 2)
    return None


def burst(sender_msg, inbox: Inbox, prefix: bytes, count: int, size: int) -> dict:
    """Send `count` numbered payloads of `size` bytes at once and wait for all of them."""
    sent = []
    for i in range(count):
        head = prefix + b"-%03d-" % i
        sent.append(head + secrets.token_bytes(size)[:max(0, size - len(head))])
    started = time.monotonic()
    for payload in sent:
        sender_msg.send_webxdc_realtime_data(payload)
    ok = inbox.wait_for(lambda got: all(p in got for p in sent), 30)
    got = [p for p in inbox.payloads if p.startswith(prefix + b"-")]
    return {"sent": len(sent), "received": sum(p in got for p in sent), "in_order": got == sent if ok else False,
            "bytes": sum(map(len, sent)), "seconds": round(time.monotonic() - started, 3)}


def run(domains: list[str], count: int, size: int, pause: float, connect_timeout: float, step: Step) -> dict:
    result: dict = {"timings": {}}
    timings = result["timings"]
    with deltachat() as dc, tempfile.TemporaryDirectory(prefix="xdc-") as tmp:
        t = time.monotonic()
        alice, alice_addr = make_account(dc, domains[0], "alice")
        bob, bob_addr = make_account(dc, domains[1], "bob")
        timings["accounts"] = round(time.monotonic() - t, 2)
        step(f"alice is {alice_addr}, bob is {bob_addr}")

        t = time.monotonic()
        bob.secure_join(alice.get_qr_code())
        alice.wait_for_securejoin_inviter_success()
        bob.wait_for_securejoin_joiner_success()
        timings["securejoin"] = round(time.monotonic() - t, 2)
        step("Secure-Join done")

        t = time.monotonic()
        alice_chat = alice.get_chat_by_contact(alice.get_contact_by_addr(bob_addr))
        alice_app = alice_chat.send_message(text="realtime lab", file=str(make_xdc(Path(tmp))))
        bob_app = bob.wait_for_incoming_msg()
        snap = bob_app.get_snapshot()
        result["app_received"] = {"text": snap.text, "viewtype": str(snap.view_type),
                                  "encrypted": bool(snap.show_padlock)}
        timings["app"] = round(time.monotonic() - t, 2)
        step(f"bob has the app ({snap.view_type})")

        # Each side joins the channel: its advertisement travels as mail to the other.
        t = time.monotonic()
        alice_app.send_webxdc_realtime_advertisement()
        bob_app.send_webxdc_realtime_advertisement()
        alice.wait_for_event(EventType.WEBXDC_REALTIME_ADVERTISEMENT_RECEIVED)
        bob.wait_for_event(EventType.WEBXDC_REALTIME_ADVERTISEMENT_RECEIVED)
        timings["advertisements"] = round(time.monotonic() - t, 2)
        step("both sides have the other's advertisement")

        alice_inbox, bob_inbox = Inbox(alice, alice_app.id), Inbox(bob, bob_app.id)
        result.update(alice=alice_addr, bob=bob_addr, connected=False)
        for name, sender, inbox, tag in (("alice_to_bob", alice_app, bob_inbox, b"hello bob"),
                                         ("bob_to_alice", bob_app, alice_inbox, b"hello alice")):
            timings[f"first_data_{name}"] = first_contact(sender, inbox, tag, connect_timeout)
            if timings[f"first_data_{name}"] is None:
                step(f"{name}: nothing arrived within {connect_timeout:.0f} s")
                alice_inbox.stop = bob_inbox.stop = True
                return result
            step(f"{name}: channel up after {timings[f'first_data_{name}']} s")
        result["connected"] = True

        result["bursts"] = [{"alice_to_bob": burst(alice_app, bob_inbox, b"a0", count, size),
                             "bob_to_alice": burst(bob_app, alice_inbox, b"b0", count, size)}]
        step(f"burst 1: {result['bursts'][0]}")
        if pause:
            # Time for the cores to find a direct path, if there is one; the caller reads the
            # iroh relays' counters between the bursts (see --pause).
            time.sleep(pause)
            print(json.dumps({"paused": True}), flush=True)
            sys.stdin.readline()
            result["bursts"].append({"alice_to_bob": burst(alice_app, bob_inbox, b"a1", count, size),
                                     "bob_to_alice": burst(bob_app, alice_inbox, b"b1", count, size)})
            step(f"burst 2: {result['bursts'][1]}")
        alice_inbox.stop = bob_inbox.stop = True
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--relays", nargs=2, metavar="DOMAIN", required=True,
                        help="Alice's relay, then Bob's relay")
    parser.add_argument("--count", type=int, default=20, help="payloads per direction and burst (default 20)")
    parser.add_argument("--size", type=int, default=1000, help="bytes per payload (default 1000)")
    parser.add_argument("--pause", type=float, default=0,
                        help="after the first burst, wait this many seconds, print {\"paused\": true} and "
                             "wait for a line on stdin before a second burst (0: one burst)")
    parser.add_argument("--connect-timeout", type=float, default=90,
                        help="seconds each side offers its first payload before the channel counts as "
                             f"not connected (exit status {NOT_CONNECTED}; default 90)")
    args = parser.parse_args(argv)
    step = Step(out=sys.stderr)
    result = run(args.relays, args.count, args.size, args.pause, args.connect_timeout, step)
    print(json.dumps(result), flush=True)
    return 0 if result["connected"] else NOT_CONNECTED


if __name__ == "__main__":
    sys.exit(main())
