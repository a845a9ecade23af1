"""chatmail-check: the client side of the chatmail VM tests.

Every subcommand prints one JSON object, so the test script asserts on data:
  login HOST USER PASSWORD                   IMAP login (the first one creates the account)
  send HOST USER PASSWORD TO --eml FILE      submit a prepared message on port 465
  send HOST USER PASSWORD TO --cleartext     submit an unencrypted message (must be refused)
  inbox HOST USER PASSWORD [--at-least N]    headers of the INBOX; exit 1 while fewer than N
TLS is verified against the system trust store, which holds the test CA.
"""

import argparse
import email
import email.policy
import imaplib
import json
import smtplib
import ssl
import sys
from email.message import EmailMessage


def login(args: argparse.Namespace) -> dict:
    try:
        with imaplib.IMAP4_SSL(args.host, 993, ssl_context=ssl.create_default_context()) as imap:
            imap.login(args.user, args.password)
    except imaplib.IMAP4.error as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True}


def cleartext(sender: str, recipient: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = recipient
    msg["Subject"] = "hello"
    msg.set_content("This is not encrypted and must not leave the relay.\n")
    return msg.as_bytes()


def send(args: argparse.Namespace) -> dict:
    if args.cleartext:
        data = cleartext(args.user, args.to)
    else:
        with open(args.eml, "rb") as fp:
            data = fp.read()
    try:
        with smtplib.SMTP_SSL(args.host, 465, context=ssl.create_default_context()) as smtp:
            smtp.login(args.user, args.password)
            smtp.sendmail(args.user, [args.to], data)
    except smtplib.SMTPResponseException as exc:
        return {"ok": False, "code": exc.smtp_code, "reply": exc.smtp_error.decode(errors="replace")}
    except smtplib.SMTPRecipientsRefused as exc:
        code, reply = next(iter(exc.recipients.values()))
        return {"ok": False, "code": code, "reply": reply.decode(errors="replace")}
    return {"ok": True}


def inbox(args: argparse.Namespace) -> dict:
    messages = []
    with imaplib.IMAP4_SSL(args.host, 993, ssl_context=ssl.create_default_context()) as imap:
        imap.login(args.user, args.password)
        imap.select("INBOX", readonly=True)
        _, data = imap.search(None, "ALL")
        for num in data[0].split():
            _, parts = imap.fetch(num, "(RFC822)")
            msg = email.message_from_bytes(parts[0][1], policy=email.policy.default)
            messages.append({
                "from": str(msg["From"]),
                "to": str(msg["To"]),
                "subject": str(msg["Subject"]),
                "content_type": msg.get_content_type(),
            })
    return {"ok": len(messages) >= args.at_least, "messages": messages}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("login", "send", "inbox"):
        p = sub.add_parser(name)
        p.add_argument("host")
        p.add_argument("user")
        p.add_argument("password")
        if name == "send":
            p.add_argument("to")
            what = p.add_mutually_exclusive_group(required=True)
            what.add_argument("--eml", help="file with the complete message")
            what.add_argument("--cleartext", action="store_true")
        if name == "inbox":
            p.add_argument("--at-least", type=int, default=0)
    args = parser.parse_args()
    result = {"login": login, "send": send, "inbox": inbox}[args.command](args)
    print(json.dumps(result))
    return 0 if args.command != "inbox" or result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
