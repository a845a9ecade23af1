"""classic.test: an ordinary mail server beside the relays, with no chatmail rules at all.

What a relay meets when a user writes to somebody at an ordinary provider: Debian 13's stock
Postfix, Dovecot and OpenDKIM, set up the way an administrator of a small single-domain
server sets them up, and nothing else (the lab's relay-only services are masked). It boots
systemd in its own container like the relays, from the same Debian tree, with Debian's
stock Dovecot (not the relays' patched storage library).

- Postfix: Debian's main.cf and master.cf, changed with ``postconf`` as an administrator
  does: the domain as a virtual mailbox domain delivered to Dovecot over LMTP, submission on
  587 with Dovecot SASL, a certificate from the lab's CA (which the relays trust as they
  would trust a public CA, so they can verify it), OpenDKIM as milter for received,
  submitted and bounced mail. Its client side stays Debian's: opportunistic TLS
  (``smtp_tls_security_level = may``).
- Recipients are checked by Dovecot when it delivers, not by Postfix at RCPT time (no
  ``virtual_mailbox_maps``): mail to an unknown user is accepted and then bounced by this
  server, so a relay user gets a bounce made by a classic server.
- Dovecot: users from a passwd-file (full addresses, SHA512-CRYPT, the vmail user's
  uid and gid), Maildir under /var/vmail, IMAP with TLS, LMTP and SASL sockets for Postfix.
- OpenDKIM: Debian's opendkim.conf with a key made by ``opendkim-genkey`` (selector
  ``mail``), signing what users submit and what the server bounces, verifying what comes in
  (its verdict in an Authentication-Results header).
- DNS: A, MX, SPF, DMARC and the DKIM key, in the lab's zone (fixtures.zone_text).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from fixtures import EXTRA_ZONES
from hosts import CLASSIC, DNS, chroot_run, host_run, merged, run, write
from relay import MASKED as RELAY_MASKED
from rootfs import VMAIL_UID

DOMAIN = CLASSIC.domain or ""
DKIM_SELECTOR = "mail"
DKIM_DIR = "/etc/dkimkeys"
DKIM_MILTER = "inet:localhost:8891"
CERT = f"/etc/ssl/certs/{DOMAIN}.pem"
KEY = f"/etc/ssl/private/{DOMAIN}.key"
USERS = "/etc/dovecot/users"
VMAIL = "/var/vmail"
LMTP_SOCKET = "private/dovecot-lmtp"
AUTH_SOCKET = "private/auth"
POSTFIX_UNIT = "postfix.service"
# Debian enables these when the packages are installed; a classic mail server runs none of
# them (and unbound would take over the resolver).
MASKED = [*RELAY_MASKED, "nginx.service", "unbound.service", "coturn.service",
          "prometheus-node-exporter.service"]

# What an administrator changes in Debian's main.cf (postconf -e), in that order.
POSTFIX_MAIN = {
    "myhostname": DOMAIN,
    # The domain is a virtual mailbox domain (Dovecot's users); only localhost stays local.
    "mydestination": "localhost",
    "virtual_mailbox_domains": DOMAIN,
    "virtual_transport": f"lmtp:unix:{LMTP_SOCKET}",
    "smtpd_tls_cert_file": CERT,
    "smtpd_tls_key_file": KEY,
    # One log line per outgoing TLS session (Debian's default is none).
    "smtp_tls_loglevel": "1",
    "smtpd_milters": DKIM_MILTER,
    "non_smtpd_milters": "$smtpd_milters",
    "milter_default_action": "accept",
    # Bounces pass the milters too, so they leave DKIM-signed: chatmail relays refuse
    # unsigned mail, bounces included.
    "internal_mail_filter_classes": "bounce",
}
# The submission service, as Debian's master.cf template has it (commented out), enabled.
SUBMISSION = "submission inet n - y - - smtpd"
SUBMISSION_OPTIONS = {
    "syslog_name": "postfix/submission",
    "smtpd_tls_security_level": "encrypt",
    "smtpd_sasl_auth_enable": "yes",
    "smtpd_sasl_type": "dovecot",
    "smtpd_sasl_path": AUTH_SOCKET,
    "smtpd_tls_auth_only": "yes",
    "smtpd_relay_restrictions": "permit_sasl_authenticated,reject",
    # OpenDKIM signs what comes in under this daemon name (its MTA setting).
    "milter_macro_daemon_name": "ORIGINATING",
}

DOVECOT_CONF = f"""# classic.test: a small single-domain server (tests/lab/classic.py)
dovecot_config_version = 2.4.0
dovecot_storage_version = 2.4.0
protocols = imap lmtp
listen = *

ssl = required
ssl_server_cert_file = {CERT}
ssl_server_key_file = {KEY}

auth_mechanisms = plain login
passdb passwd-file {{
  passwd_file_path = {USERS}
}}
userdb passwd-file {{
  passwd_file_path = {USERS}
}}

mail_driver = maildir
mail_home = {VMAIL}/%{{user | domain}}/%{{user | username}}
mail_path = ~/Maildir
namespace inbox {{
  inbox = yes
}}

service lmtp {{
  unix_listener /var/spool/postfix/{LMTP_SOCKET} {{
    mode = 0600
    user = postfix
    group = postfix
  }}
}}
service auth {{
  unix_listener /var/spool/postfix/{AUTH_SOCKET} {{
    mode = 0660
    user = postfix
    group = postfix
  }}
}}
"""

# What an administrator changes in Debian's opendkim.conf.
OPENDKIM = {
    "Domain": DOMAIN,
    "Selector": DKIM_SELECTOR,
    "KeyFile": f"{DKIM_DIR}/{DKIM_SELECTOR}.private",
    # Postfix's smtpd runs chrooted: a loopback port instead of Debian's socket in /run.
    "Socket": "inet:8891@localhost",
    "Mode": "sv",
    "MTA": "ORIGINATING",
    # Debian's OpenDKIM resolves with libunbound: recursively from the root servers, with
    # .test answered locally (RFC 6761), unless configured otherwise. Lab only: the lab has
    # just its own DNS server (and no signed root, so no trust anchor).
    "ResolverConfiguration": "/etc/opendkim/unbound.conf",
}
OPENDKIM_DROPPED = ("TrustAnchorFile",)
OPENDKIM_RESOLVER = f"""server:
  local-zone: "test." nodefault
forward-zone:
  name: "."
  forward-addr: {DNS.ip}
"""


def opendkim_conf(stock: str) -> str:
    """Debian's opendkim.conf with the keys of OPENDKIM replaced (or added)."""
    ours = set(OPENDKIM) | set(OPENDKIM_DROPPED)
    kept = [line for line in stock.splitlines() if not (line.split() and line.split()[0] in ours)]
    return "\n".join(kept + [f"{k}\t{v}" for k, v in OPENDKIM.items()]) + "\n"


def dkim_record(genkey_txt: str) -> str:
    """opendkim-genkey's record (owner relative to the domain) with its owner fully qualified."""
    owner = f"{DKIM_SELECTOR}._domainkey"
    if not genkey_txt.startswith(owner):
        raise ValueError(f"unexpected opendkim-genkey output: {genkey_txt[:60]!r}")
    return f"{owner}.{DOMAIN}." + genkey_txt[len(owner):]


def zone(dkim_txt: str) -> str:
    """classic.test's records: what its administrator publishes for mail."""
    return (f"; {DOMAIN}: an ordinary mail server (tests/lab/classic.py)\n"
            f"{DOMAIN}. A {CLASSIC.ip}\n"
            f"{DOMAIN}. MX 10 {DOMAIN}.\n"
            f'{DOMAIN}. TXT "v=spf1 mx -all"\n'
            f'_dmarc.{DOMAIN}. TXT "v=DMARC1; p=reject; adkim=s; aspf=s"\n'
            + dkim_record(dkim_txt).rstrip("\n") + "\n")


def configure(ca: Path, acme_root: str) -> None:
    """Write classic.test's configuration into its tree (not yet booted) and its records
    where the lab's zone picks them up. It trusts the lab's CA and the ACME server's root
    (the relays' certificates), as a server trusts the public CAs."""
    root = merged(CLASSIC)
    (root / "etc/hostname").write_text(CLASSIC.hostname + "\n")
    (root / "etc/mailname").write_text(DOMAIN + "\n")

    # TLS: a certificate from the lab's CA; the lab's CAs in the trust store, as public ones are.
    write(root, CERT, (ca / f"{DOMAIN}.pem").read_text())
    write(root, KEY, (ca / f"{DOMAIN}.key").read_text(), 0o640)
    write(root, "/usr/local/share/ca-certificates/chatmail-lab.crt", (ca / "ca.pem").read_text())
    write(root, "/usr/local/share/ca-certificates/chatmail-lab-acme.crt", acme_root)
    chroot_run(CLASSIC, ["chgrp", "ssl-cert", KEY])
    chroot_run(CLASSIC, ["update-ca-certificates"], capture=True)

    # Postfix: Debian's files, changed with postconf.
    chroot_run(CLASSIC, ["postconf", "-e", *[f"{k}={v}" for k, v in POSTFIX_MAIN.items()]])
    chroot_run(CLASSIC, ["postconf", "-M", f"submission/inet={SUBMISSION}"])
    chroot_run(CLASSIC, ["postconf", "-P", *[f"submission/inet/{k}={v}" for k, v in SUBMISSION_OPTIONS.items()]])
    # The queue's private/ directory, where Dovecot puts its sockets: Postfix makes it when it
    # first starts (on a real server, long before), but here Dovecot may start first.
    chroot_run(CLASSIC, ["install", "-d", "-o", "postfix", "-g", "root", "-m", "0700", "/var/spool/postfix/private"])

    # Dovecot: its configuration, an empty user list (add_user fills it), the mail store.
    write(root, "/etc/dovecot/dovecot.conf", DOVECOT_CONF)
    write(root, USERS, "", 0o640)
    chroot_run(CLASSIC, ["chgrp", "dovecot", USERS])
    chroot_run(CLASSIC, ["install", "-d", "-o", "vmail", "-g", "vmail", "-m", "0750", VMAIL])

    # OpenDKIM: a key from opendkim-genkey, Debian's configuration with the key and socket.
    chroot_run(CLASSIC, ["opendkim-genkey", "-D", DKIM_DIR, "-d", DOMAIN, "-s", DKIM_SELECTOR])
    chroot_run(CLASSIC, ["chown", "-R", "opendkim:opendkim", DKIM_DIR])
    conf = root / "etc/opendkim.conf"
    conf.write_text(opendkim_conf(conf.read_text()))
    write(root, OPENDKIM["ResolverConfiguration"], OPENDKIM_RESOLVER)

    for unit in MASKED:
        link = root / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")

    dkim_txt = (root / DKIM_DIR.lstrip("/") / f"{DKIM_SELECTOR}.txt").read_text()
    EXTRA_ZONES.mkdir(parents=True, exist_ok=True)
    (EXTRA_ZONES / f"{DOMAIN}.zone").write_text(zone(dkim_txt))


def add_user(addr: str, password: str) -> None:
    """A new mailbox on classic.test: one line in Dovecot's passwd-file (read again by
    Dovecot when it changes); Dovecot makes the Maildir on the first delivery."""
    if not re.fullmatch(r"[a-z0-9.+-]+@" + re.escape(DOMAIN), addr):
        raise ValueError(f"not an address of {DOMAIN}: {addr!r}")
    crypt = run(["openssl", "passwd", "-6", "-stdin"], capture=True, input=password).stdout.strip()
    users = merged(CLASSIC) / USERS.lstrip("/")
    before = users.stat().st_mtime if users.exists() else 0.0
    with users.open("a") as f:
        f.write(f"{addr}:{{SHA512-CRYPT}}{crypt}:{VMAIL_UID}:{VMAIL_UID}::\n")
    # Dovecot reads the file again when its time stamp moves: make sure it does, even for
    # two users added within one second, and wait until Dovecot knows the new one (a lookup
    # that still missed it would bounce the test's mail as "User doesn't exist").
    stamp = max(time.time(), before + 1)
    os.utime(users, (stamp, stamp))
    for _ in range(50):
        if host_run(CLASSIC, ["doveadm", "user", addr], check=False, capture=True).returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"classic.test's Dovecot does not know {addr} after 10 s")


def describe() -> str:
    """One line for `lab status`."""
    return f"classic: {DOMAIN} ({CLASSIC.ip}: stock Postfix, Dovecot and OpenDKIM; SMTP 25/587, IMAP 993)"
