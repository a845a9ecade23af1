"""The hostile-input suite's lab part: hostile mail and requests through the relays' real
front doors (Postfix on port 25 and 465, nginx on 443), counted like the unit part
(python/chatmaild/tests/test_hostile.py): crashes (a daemon restarted or a front door that
stopped answering), hangs (a case beyond its time bound) and wrong accepts (a hostile case
answered 250/2xx, or anything landing in the strict recipient's mailbox) must all be 0.
A few friendly controls prove that an accept would be noticed."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from conftest import HERE, labmod, relay_file

CLIENT_IP = labmod.CLIENT.ip
DAEMONS = ["filtermail.service", "filtermail-incoming.service", "doveauth.service", "chatmail-metadata.service",
           "chatmail-newemail.service", "postfix.service", "dovecot.service", "nginx.service"]


def plain(sender: str, rcpt: str, extra: str = "", ctype: str = "text/plain", body: str = "hello") -> str:
    return (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: hi\r\nMessage-ID: <h{abs(hash(extra + ctype + body))}"
            f"@x.example>\r\n{extra}Content-Type: {ctype}\r\n\r\n{body}\r\n")


def incoming_messages(sender: str, rcpt: str) -> dict[str, str]:
    """Mail another server might send that a strict recipient must never get."""
    fake_armor = "-----BEGIN PGP MESSAGE-----\r\n\r\nHELLOWORLD\r\n-----END PGP MESSAGE-----"
    enc = 'multipart/encrypted; protocol="application/pgp-encrypted"; boundary="b"'
    enc_body = (f"--b\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n--b\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n{fake_armor}\r\n--b--")
    nested = "".join(f'--n{i}\r\nContent-Type: multipart/mixed; boundary="n{i + 1}"\r\n\r\n' for i in range(120))
    return {
        "cleartext": plain(sender, rcpt),
        "fake-pgp-armor": plain(sender, rcpt, ctype=enc, body=enc_body),
        "securejoin-spam": plain(sender, rcpt, "Secure-Join: vc-request\r\n", body="Buy viagra!"),
        "autosubmitted-no-bounce": plain(f"MAILER-DAEMON@{sender.split('@')[1]}", rcpt,
                                         "Auto-Submitted: no\r\n", "multipart/report; report-type=delivery-status; "
                                         'boundary="r"', "--r\r\n\r\nx\r\n--r--"),
        "autoreplied-without-dsn": plain(sender, rcpt, "Auto-Submitted: auto-replied\r\n"),
        "two-from-headers": f"From: {sender}\r\n" + plain(sender, rcpt),
        "ip-literal-other": plain("x@[192.0.2.1]", rcpt),
        "ipv6-literal": plain("x@[IPv6:2001:db8::1]", rcpt),
        "nested-120-deep": plain(sender, rcpt, ctype='multipart/mixed; boundary="n0"', body=nested),
        "nul-and-8bit": plain(sender, rcpt, body="\x00\xff\xfe binary \udcff"),
        "overlong-header": plain(sender, rcpt, "X-Long: " + "a" * 20000 + "\r\n"),
        "no-from": f"To: {rcpt}\r\nSubject: x\r\n\r\nbody\r\n",
        "group-from": plain("undisclosed:;", rcpt),
        "encoded-word-from": plain(f"=?utf-8?q?{sender}?= <{sender}>", rcpt),
    }


def outgoing_messages(me: str, victim: str, rcpt: str) -> dict[str, str]:
    """What a logged-in user might submit to sign as someone else or to send cleartext."""
    return {
        "cleartext": plain(me, rcpt),
        "from-victim": plain(victim, rcpt),
        "two-from-own-first": f"From: {me}\r\n" + plain(victim, rcpt),
        "from-list": plain(f"<{me}>, <{victim}>", rcpt),
        "from-display-trick": plain(f"{me} <{victim}>", rcpt),
        "sender-victim": plain(me, rcpt, f"Sender: {victim}\r\n"),
        "securejoin-spam": plain(me, rcpt, "Secure-Join: vc-request\r\n", body="Buy viagra!"),
        "asm-to-others": plain(me, rcpt, "Autocrypt-Setup-Message: v1\r\n", "multipart/mixed; boundary=z",
                               "--z\r\n\r\nx\r\n--z--").replace("Subject: hi", "Subject: Autocrypt Setup Message"),
        "mdn-cleartext": plain(me, rcpt, "Auto-Submitted: auto-replied\r\n",
                               'multipart/report; report-type=disposition-notification; boundary="m"',
                               "--m\r\n\r\nread\r\n--m--"),
        "comment-in-from": plain(f"{victim} (really {me})", rcpt),
    }


def build_cases(bob: str, logins: list[tuple[str, str]], remote: str, encrypted_own: str,
                encrypted_out: str) -> list[dict]:
    """The cases; each of the three logins stays within the sending rate limit (ten at once)."""
    local, domain = bob.split("@")
    spellings = [bob, f"{local}+x@{domain}", f"{local.upper()}@{domain}", f"{local}+@{domain}",
                 f"{local}+a+b@{domain.upper()}"]
    cases: list[dict] = []
    for sender in ("someone@relay2.test", "peer@elsewhere.example"):
        for name, data in incoming_messages(sender, bob).items():
            for rcpt in spellings:
                cases.append({"name": f"25:{name}:{sender}:{rcpt}", "kind": "smtp25", "host": "relay1.test",
                              "mail_from": sender, "rcpt": rcpt, "data": data, "expect": "refuse"})
    for (me, pw), rcpt in zip(logins, (bob, remote)):
        victim = f"victim0001@{me.split('@')[1]}"
        for name, data in outgoing_messages(me, victim, rcpt).items():
            cases.append({"name": f"465:{name}:{rcpt}", "kind": "submit", "host": "relay1.test", "login": [me, pw],
                          "mail_from": me, "rcpt": rcpt, "data": data, "expect": "refuse"})
    for name, data in incoming_messages("someone@relay2.test", bob).items():
        cases.append({"name": f"mxdeliv:{name}", "kind": "https", "host": "relay1.test", "method": "POST",
                      "path": "/mxdeliv", "headers": {"X-MAIL-FROM": "someone@relay2.test", "X-MAIL-TO": bob},
                      "body": data, "expect": "refuse"})
    own_literal = f"peer@[{CLIENT_IP}]"
    for name, headers in {
        "no-envelope": {},
        "ip-literal-own-address": {"X-MAIL-FROM": own_literal, "X-MAIL-TO": bob},
        "superscript-length": {"X-MAIL-FROM": "a@relay2.test", "X-MAIL-TO": bob, "Content-Length": "\u00b2"},
        "negative-length": {"X-MAIL-FROM": "a@relay2.test", "X-MAIL-TO": bob, "Content-Length": "-1"},
        "crlf-in-envelope": {"X-MAIL-FROM": "a@relay2.test\r\nX: y", "X-MAIL-TO": bob},
        "many-recipients": {"X-MAIL-FROM": "a@relay2.test", "X-MAIL-TO": ",".join([bob] * 2000)},
        "foreign-recipient": {"X-MAIL-FROM": "a@relay2.test", "X-MAIL-TO": "x@elsewhere.example"},
    }.items():
        body = encrypted_own if name == "ip-literal-own-address" else plain("a@relay2.test", bob)
        cases.append({"name": f"mxdeliv:{name}", "kind": "https", "host": "relay1.test", "method": "POST",
                      "path": "/mxdeliv", "headers": headers, "body": body, "expect": "refuse"})
    for method in ("PUT", "DELETE", "PATCH", "TRACE", "PROPFIND"):
        for path in ("/new", "/cgi-bin/newemail.py", "/mxdeliv"):
            cases.append({"name": f"https:{method}:{path}", "kind": "https", "host": "relay1.test", "method": method,
                          "path": path, "body": "", "expect": "refuse"})
    for path in ("/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/new/../../etc/shadow", "/.git/config",
                 "/" + "a" * 9000, "/privacy.html%00.txt"):
        cases.append({"name": f"https:GET:{path[:30]}", "kind": "https", "host": "relay1.test", "method": "GET",
                      "path": path, "body": "", "expect": "refuse"})
    # Friendly controls: the harness notices an accept.
    cases.append({"name": "control:25:own-ip-literal-encrypted", "kind": "smtp25", "host": "relay1.test",
                  "mail_from": own_literal, "rcpt": bob, "data": encrypted_own, "expect": "accept"})
    me, pw = logins[2]
    cases.append({"name": "control:465:encrypted", "kind": "submit", "host": "relay1.test", "login": [me, pw],
                  "mail_from": me, "rcpt": remote, "data": encrypted_out, "expect": "accept"})
    cases.append({"name": "control:https:index", "kind": "https", "host": "relay1.test", "method": "GET",
                  "path": "/", "body": "", "expect": "accept"})
    return cases


def restarts(relay: str) -> dict[str, str]:
    """Each daemon's restart count and main process. A socket-activated daemon starts when
    a request comes and leaves when idle, so for it a new process is no crash: only its
    restart count (systemd restarts it after a crash, Restart=on-failure) is compared."""
    on_demand = [unit for unit in DAEMONS if unit.removesuffix(".service") in labmod.relay_config()["units"]["sockets"]]
    always = [unit for unit in DAEMONS if unit not in on_demand]
    out = labmod.host_run(labmod.BY_NAME[relay], ["systemctl", "show", *always, "-p", "Id,NRestarts,MainPID"],
                          capture=True).stdout
    out += "\n\n" + labmod.host_run(labmod.BY_NAME[relay], ["systemctl", "show", *on_demand, "-p", "Id,NRestarts"],
                                    capture=True).stdout
    return {block.strip(): block.strip() for block in out.split("\n\n") if block.strip()}


def test_hostile_mail_and_requests_through_postfix_and_nginx_get_no_crash_no_hang_no_wrong_accept(account):
    sys.path.insert(0, str(HERE))
    from mailcheck import encrypted_message

    bob, _ = account("relay1.test")
    home = relay_file("relay1", f"{labmod.paths('relay1')['mailboxesDir']}/{bob}")
    (home / "enforceE2EEincoming").touch()
    logins = [account("relay1.test") for _ in range(3)]
    remote, _ = account("relay2.test")
    own_literal = f"peer@[{CLIENT_IP}]"
    encrypted_own = encrypted_message(own_literal, bob, "control-own-literal").decode()
    encrypted_out = encrypted_message(logins[2][0], remote, "control-out").decode()
    cases = build_cases(bob, logins, remote, encrypted_own, encrypted_out)
    before = restarts("relay1")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cases, f)
    try:
        cmd = labmod.in_host(labmod.CLIENT, [sys.executable, str(HERE / "hostilelab.py"),
                                             "--cafile", str(labmod.STATE / "ca/ca.pem"), f.name])
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = proc.stdout
    finally:
        Path(f.name).unlink()
    results = json.loads(out)
    tally = {"cases": len(cases), "crash": 0, "hang": 0, "wrong-accept": 0, "wrong-refusal": 0}
    bad = []
    for case, result in zip(cases, results, strict=True):
        code = result["code"]
        accepted = code == 250 or 200 <= code < 300
        if code == -1:
            tally["hang"] += 1
            bad.append((case["name"], result))
        elif case["expect"] == "refuse" and accepted:
            tally["wrong-accept"] += 1
            bad.append((case["name"], result))
        elif case["expect"] == "accept" and not accepted:
            tally["wrong-refusal"] += 1
            bad.append((case["name"], result))
    landed = [p.read_bytes()[:200] for sub in ("new", "cur") for p in (home / sub).iterdir()
              if b"control-own-literal" not in p.read_bytes()]
    tally["wrong-accept"] += len(landed)
    after = restarts("relay1")
    crashed = [block for block in after if block not in before]
    tally["crash"] += len(crashed)
    by_kind = {k: sum(1 for c in cases if c["kind"] == k) for k in ("smtp25", "submit", "https")}
    print(f"hostile-input suite (lab): {tally['cases']} cases through the real Postfix and nginx "
          f"(port 25: {by_kind['smtp25']}, submission: {by_kind['submit']}, HTTPS: {by_kind['https']}), "
          f"{tally['crash']} crashes, {tally['hang']} hangs, {tally['wrong-accept']} wrong accepts "
          f"({tally['wrong-refusal']} friendly controls refused)")
    codes: dict[int, int] = {}
    for r in results:
        codes[r["code"]] = codes.get(r["code"], 0) + 1
    print(f"answers: {dict(sorted(codes.items()))}; slowest case {max(r['seconds'] for r in results):.1f} s")
    assert bad == [] and landed == [] and crashed == [], (bad, landed, crashed)
    assert tally["crash"] == tally["hang"] == tally["wrong-accept"] == tally["wrong-refusal"] == 0
