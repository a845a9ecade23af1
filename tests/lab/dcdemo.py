#!/usr/bin/env python3
"""Two Delta Chat users on two relays: a Secure-Join, then messages both ways.

Runs real Delta Chat cores (deltachat-rpc-server) through deltachat-rpc-client, on the
lab's client host. Each user's account is created by its first login, like a new user
on a real relay. The cores verify nothing about the lab CA (they trust only their own
bundled roots), so their transports accept the relays' certificates as they are; the
relays themselves still verify each other's certificates.

Prints each step with its time, and exits non-zero with the step that failed.
"""

from __future__ import annotations

import argparse
import secrets
import string
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from deltachat_rpc_client import DeltaChat, Rpc

LETTERS = string.ascii_lowercase + string.digits


def new_credentials(domain: str) -> tuple[str, str]:
    """A fresh address that satisfies the relay's default username rules (9 characters)."""
    user = "".join(secrets.choice(LETTERS) for _ in range(9))
    return f"{user}@{domain}", secrets.token_urlsafe(16)


def transport(addr: str, password: str) -> dict:
    domain = addr.split("@", 1)[1]
    return {
        "addr": addr,
        "password": password,
        "imapServer": domain,
        "imapPort": 993,
        "imapSecurity": "ssl",
        "smtpServer": domain,
        "smtpPort": 465,
        "smtpSecurity": "ssl",
        "certificateChecks": "acceptInvalidCertificates",
    }


class Step:
    def __init__(self, out=sys.stdout):
        self.t0 = time.monotonic()
        self.out = out

    def __call__(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.2f}s] {msg}", file=self.out, flush=True)


@contextmanager
def deltachat():
    # The server binary sits beside this interpreter when both come from one virtualenv.
    beside = Path(sys.executable).parent / "deltachat-rpc-server"
    server = str(beside) if beside.exists() else "deltachat-rpc-server"
    with tempfile.TemporaryDirectory(prefix="dc-accounts-") as accounts, \
            Rpc(accounts_dir=accounts, rpc_server_path=server) as rpc:
        yield DeltaChat(rpc)


def make_account(dc: DeltaChat, domain: str, name: str):
    addr, password = new_credentials(domain)
    account = dc.add_account()
    account.set_config("displayname", name)
    account.add_or_update_transport(transport(addr, password))
    account.bring_online()
    return account, addr


def has_key(contact) -> bool:
    snap = contact.get_snapshot()
    return bool(snap.is_key_contact and snap.e2ee_avail)


def run_scenario(domains: list[str], step: Step) -> dict:
    """Alice on the first relay invites Bob on the second; they then talk both ways."""
    with deltachat() as dc:
        step(f"configuring alice on {domains[0]} (her first login creates the account)")
        alice, alice_addr = make_account(dc, domains[0], "alice")
        step(f"alice is {alice_addr}")
        step(f"configuring bob on {domains[1]}")
        bob, bob_addr = make_account(dc, domains[1], "bob")
        step(f"bob is {bob_addr}")

        step("alice shows her invite QR code; bob scans it (Secure-Join across the relays)")
        qr = alice.get_qr_code()
        bob.secure_join(qr)
        alice.wait_for_securejoin_inviter_success()
        step("alice: Secure-Join done, bob is verified")
        bob.wait_for_securejoin_joiner_success()
        step("bob: Secure-Join done, alice is verified")

        bob_chat = bob.get_chat_by_contact(bob.get_contact_by_addr(alice_addr))
        alice_chat = alice.get_chat_by_contact(alice.get_contact_by_addr(bob_addr))
        text1 = f"hello alice, this is bob ({secrets.token_hex(4)})"
        bob_chat.send_text(text1)
        t = time.monotonic()
        got1 = alice.wait_for_incoming_msg().get_snapshot()
        step(f"alice received from bob in {time.monotonic() - t:.2f}s: {got1.text!r}")
        text2 = f"hi bob, alice here ({secrets.token_hex(4)})"
        alice_chat.send_text(text2)
        t = time.monotonic()
        got2 = bob.wait_for_incoming_msg().get_snapshot()
        step(f"bob received from alice in {time.monotonic() - t:.2f}s: {got2.text!r}")
        return {
            "alice": alice_addr,
            "bob": bob_addr,
            "sent": [text1, text2],
            "received": [got1.text, got2.text],
            "encrypted": [bool(got1.show_padlock), bool(got2.show_padlock)],
            # Verification itself is the Secure-Join success on both sides (above); here
            # each side must also hold the other's key.
            "alice_has_key": has_key(alice.get_contact_by_addr(bob_addr)),
            "bob_has_key": has_key(bob.get_contact_by_addr(alice_addr)),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--relays", nargs=2, metavar="DOMAIN", required=True,
                        help="the inviter's relay, then the joiner's relay")
    args = parser.parse_args(argv)
    step = Step()
    result = run_scenario(args.relays, step)
    ok = result["sent"] == result["received"] and all(result["encrypted"]) and result["alice_has_key"] \
        and result["bob_has_key"]
    step("demo " + ("succeeded: verified, end-to-end encrypted, both ways" if ok else f"FAILED: {result}"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
