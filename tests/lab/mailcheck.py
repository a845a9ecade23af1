#!/usr/bin/env python3
"""One mail client for every lab scenario: log in, send, deliver like a relay, wait for mail.

Runs on the lab's client host. TLS is verified against the lab CA (--cafile); the result of
each command is one JSON object on stdout, so tests assert on data, not on log text.
Temporary failures (4xx) are retried a few times; permanent ones are reported, not raised.

  mailcheck.py login ADDR PASSWORD
  mailcheck.py send ADDR PASSWORD --to RCPT [--cleartext] [--port 465|587]
  mailcheck.py deliver --host RELAY --from ADDR --to RCPT [--cleartext]   (as a foreign MTA on port 25)
  mailcheck.py wait ADDR PASSWORD --token TOKEN [--timeout 20]
"""

from __future__ import annotations

import argparse
import imaplib
import json
import secrets
import smtplib
import ssl
import sys
import time
import warnings
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY

warnings.filterwarnings("ignore")  # pgpy 0.6 warns on import about ciphers it never uses here


def tls_context(cafile: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cafile)


def cleartext_message(sender: str, rcpt: str, token: str) -> bytes:
    msg = EmailMessage(policy=SMTP_POLICY)
    msg["From"], msg["To"], msg["Subject"] = sender, rcpt, f"cleartext {token}"
    msg["Message-ID"] = f"<{token}@{sender.split('@')[1]}>"
    msg.set_content(f"This is not encrypted. {token}\n")
    return msg.as_bytes()


def encrypted_message(sender: str, rcpt: str, token: str) -> bytes:
    """A real PGP/MIME message (RFC 3156): PKESK + SEIPD packets made by pgpy."""
    import pgpy
    from pgpy.constants import HashAlgorithm, KeyFlags, PubKeyAlgorithm, SymmetricKeyAlgorithm

    key = pgpy.PGPKey.new(PubKeyAlgorithm.RSAEncryptOrSign, 2048)
    uid = pgpy.PGPUID.new(rcpt.split("@")[0], email=rcpt)
    key.add_uid(uid, usage={KeyFlags.EncryptCommunications}, hashes=[HashAlgorithm.SHA256],
                ciphers=[SymmetricKeyAlgorithm.AES256])
    armored = str(key.pubkey.encrypt(pgpy.PGPMessage.new(f"secret {token}")))
    msg = EmailMessage(policy=SMTP_POLICY)
    msg["From"], msg["To"], msg["Subject"] = sender, rcpt, f"encrypted {token}"
    # The relay hides the subject and the body is encrypted: the Message-ID carries the token.
    msg["Message-ID"] = f"<{token}@{sender.split('@')[1]}>"
    msg.make_mixed()
    msg.replace_header("Content-Type", 'multipart/encrypted; protocol="application/pgp-encrypted"')
    version = EmailMessage(policy=SMTP_POLICY)
    version.set_payload("Version: 1\r\n")
    version["Content-Type"] = "application/pgp-encrypted"
    payload = EmailMessage(policy=SMTP_POLICY)
    payload.set_payload(armored.replace("\r\n", "\n").replace("\n", "\r\n"))
    payload["Content-Type"] = 'application/octet-stream; name="encrypted.asc"'
    msg.attach(version)
    msg.attach(payload)
    return msg.as_bytes()


def smtp_result(fn) -> dict:
    for attempt in range(5):
        try:
            refused = fn()
            if refused:
                code, text = next(iter(refused.values()))
                return {"ok": False, "code": code, "text": text.decode(errors="replace")}
            return {"ok": True, "code": 250}
        except smtplib.SMTPResponseException as e:
            if 400 <= e.smtp_code < 500 and attempt < 4:
                time.sleep(1)
                continue
            return {"ok": False, "code": e.smtp_code, "text": e.smtp_error.decode(errors="replace")}
        except smtplib.SMTPRecipientsRefused as e:
            code, text = next(iter(e.recipients.values()))
            return {"ok": False, "code": code, "text": text.decode(errors="replace")}
    return {"ok": False, "code": 0, "text": "gave up after temporary failures"}


def cmd_login(a) -> dict:
    host = a.addr.split("@")[1]
    with imaplib.IMAP4_SSL(host, 993, ssl_context=tls_context(a.cafile)) as imap:
        try:
            imap.login(a.addr, a.password)
        except imaplib.IMAP4.error as e:
            return {"ok": False, "error": str(e)}
        return {"ok": True, "capabilities": sorted(c.decode() if isinstance(c, bytes) else c for c in imap.capabilities)}


def cmd_send(a) -> dict:
    host = a.addr.split("@")[1]
    token = a.token or secrets.token_hex(6)
    data = (cleartext_message if a.cleartext else encrypted_message)(a.addr, a.to, token)

    def go():
        ctx = tls_context(a.cafile)
        if a.port == 465:
            conn = smtplib.SMTP_SSL(host, 465, context=ctx, timeout=30)
        else:
            conn = smtplib.SMTP(host, a.port, timeout=30)
            conn.starttls(context=ctx)
        with conn:
            conn.login(a.addr, a.password)
            return conn.sendmail(a.addr, [a.to], data)

    return {"token": token, **smtp_result(go)}


def cmd_deliver(a) -> dict:
    token = a.token or secrets.token_hex(6)
    data = (cleartext_message if a.cleartext else encrypted_message)(a.sender, a.to, token)

    def go():
        with smtplib.SMTP(a.host, 25, local_hostname="mta.example.test", timeout=30) as conn:
            conn.starttls(context=tls_context(a.cafile))
            return conn.sendmail(a.sender, [a.to], data)

    return {"token": token, **smtp_result(go)}


def cmd_wait(a) -> dict:
    host = a.addr.split("@")[1]
    deadline = time.monotonic() + a.timeout
    with imaplib.IMAP4_SSL(host, 993, ssl_context=tls_context(a.cafile)) as imap:
        imap.login(a.addr, a.password)
        while time.monotonic() < deadline:
            imap.select("INBOX")
            _, ids = imap.search(None, "ALL")
            for num in ids[0].split():
                _, parts = imap.fetch(num, "(RFC822)")
                raw = parts[0][1]
                if a.token.encode() in raw:
                    return {"ok": True, "message": raw.decode(errors="replace")}
            time.sleep(0.2)
    return {"ok": False, "error": f"no message with {a.token} within {a.timeout} s"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cafile", default="/run/chatmail-lab/ca/ca.pem", help="CA that signs the relays")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("login", help="IMAP login (creates the account on a first login)")
    s.add_argument("addr")
    s.add_argument("password")
    s = sub.add_parser("send", help="submit a message as an authenticated user")
    s.add_argument("addr")
    s.add_argument("password")
    s.add_argument("--to", required=True)
    s.add_argument("--cleartext", action="store_true", help="send unencrypted (the relay must refuse it)")
    s.add_argument("--port", type=int, default=465, choices=(465, 587))
    s.add_argument("--token", help="unique text to find the message by (default: random)")
    s = sub.add_parser("deliver", help="deliver on port 25 as another mail server would")
    s.add_argument("--host", required=True)
    s.add_argument("--from", dest="sender", required=True)
    s.add_argument("--to", required=True)
    s.add_argument("--cleartext", action="store_true")
    s.add_argument("--token")
    s = sub.add_parser("wait", help="wait until a message with the token is in the INBOX")
    s.add_argument("addr")
    s.add_argument("password")
    s.add_argument("--token", required=True)
    s.add_argument("--timeout", type=float, default=20)
    a = p.parse_args(argv)
    result = {"login": cmd_login, "send": cmd_send, "deliver": cmd_deliver, "wait": cmd_wait}[a.cmd](a)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
