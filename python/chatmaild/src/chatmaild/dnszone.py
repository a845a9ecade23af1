"""The DNS zone a chatmail relay needs, and a check of what is published.

Other relays find this one, trust its certificates and accept its mail only
through DNS: the MX and address records route mail here, the DKIM key lets
them verify signatures, MTA-STS and the SRV records tell senders and clients
which ports and TLS to expect, and SPF/DMARC tell classic mail servers what
to do with forgeries. An operator who types these records by hand gets one
of them wrong sooner or later, so the zone is computed from the same
chatmail.ini and DKIM key the relay runs with, and checked against what the
resolver returns.

Everything here is a pure function of its inputs except :func:`host_addresses`
(asks ``ip``), :func:`find_acme_account_uri` (reads lego's account files) and
:func:`system_resolver`; each of those is passed in, so tests need neither a
network nor a relay.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import importlib.resources
import ipaddress
import json
import logging
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.resolver
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from .cli import Runner, run_command

log = logging.getLogger(__name__)

TTL = 3600
"""One hour: short enough to fix a mistake the same day, long enough to be cached."""

TXT_STRING_BYTES = 255
"""A TXT record is a list of strings of at most 255 bytes each (RFC 1035 <character-string>)."""

MTA_STS_TEMPLATE = "mta-sts.txt.in"
"""The MTA-STS policy, with ``@mail_domain@`` for the domain. nginx serves the very same text
(nixos/modules/chatmail/config/nginx.nix reads this file), so the id below follows it."""

MTA_STS_ID_CHARS = 20
"""Hex digits of the policy hash used as MTA-STS id (RFC 8461 allows 1 to 32 alphanumerics)."""

DEFAULT_CAA_ISSUER = "letsencrypt.org"
ACME_ACCOUNTS_DIR = Path("/var/lib/acme/.lego/accounts")
"""Where NixOS's security.acme keeps lego's accounts (``<hash>/<server>/<email>/account.json``)."""

# Submission and IMAP, with and without implicit TLS (RFC 6186, RFC 8314).
SRV_SERVICES = (
    ("_submission._tcp", 587),
    ("_submissions._tcp", 465),
    ("_imap._tcp", 143),
    ("_imaps._tcp", 993),
)


class ZoneError(Exception):
    """An input the zone cannot be made from (no DKIM key, an IP-literal relay, ...)."""


@dataclasses.dataclass(frozen=True)
class Record:
    """One resource record, in zone-file spelling."""

    name: str
    """Absolute owner name, with the trailing dot."""
    rtype: str
    value: str
    """The rdata as it appears in a zone file (TXT already quoted and split)."""
    section: str
    """The heading it is printed under."""

    @property
    def label(self) -> str:
        """How the check table and error messages name the record."""
        return f"{self.name} {self.rtype}"


@dataclasses.dataclass(frozen=True)
class ZoneSettings:
    """Everything the zone depends on."""

    domain: str
    ipv4: tuple[str, ...]
    ipv6: tuple[str, ...]
    dkim_selector: str
    dkim_value: str
    """The DKIM TXT value in one piece, e.g. ``v=DKIM1;k=rsa;p=...;s=email;t=s``."""
    mta_sts: bool
    """MTA-STS needs a certificate other servers trust: not for self-signed relays."""
    caa_issuer: str | None
    acme_account_uri: str | None = None
    tlsrpt_rua: str | None = None
    """Where TLS reports go (``mailto:`` or ``https:``); default ``mailto:postmaster@<domain>``."""


# --- the pieces ------------------------------------------------------------


def mta_sts_policy(domain: str) -> str:
    """The MTA-STS policy text nginx serves at ``https://mta-sts.<domain>/.well-known/mta-sts.txt``."""
    template = importlib.resources.files("chatmaild").joinpath(MTA_STS_TEMPLATE).read_text(encoding="utf-8")
    return template.replace("@mail_domain@", domain)


def mta_sts_id(policy: str) -> str:
    """An id that changes exactly when the policy text does.

    RFC 8461 makes senders refetch the policy only when the id changes; a
    hash of the text needs no state and cannot be forgotten on an edit.
    """
    return hashlib.sha256(policy.encode("utf-8")).hexdigest()[:MTA_STS_ID_CHARS]


def dkim_txt_value(private_key_pem: bytes) -> str:
    """The DKIM key record value (RFC 6376 §3.6.1) for a PEM private key (RSA or Ed25519).

    ``s=email`` limits the key to mail, ``t=s`` forbids subdomain identities,
    as the reference relay publishes it.
    """
    try:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ZoneError(f"not a PEM private key without passphrase: {exc}") from None
    if isinstance(key, rsa.RSAPrivateKey):
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        algorithm = "rsa"
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        # RFC 8463: the bare 32-byte public key, not a SubjectPublicKeyInfo.
        der = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        algorithm = "ed25519"
    else:
        raise ZoneError(f"DKIM keys are RSA or Ed25519, not {type(key).__name__}")
    return f"v=DKIM1;k={algorithm};p={base64.b64encode(der).decode('ascii')};s=email;t=s"


def read_dkim_value(path: Path) -> str:
    """:func:`dkim_txt_value` of a key file, with errors that name the file."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ZoneError(f"cannot read the DKIM key {path}: {exc.strerror or exc}") from None
    try:
        return dkim_txt_value(pem)
    except ZoneError as exc:
        raise ZoneError(f"{path}: {exc}") from None


def quote_txt(value: str) -> str:
    """Quote a TXT value for a zone file, split into strings of at most 255 bytes."""
    data = value.encode("ascii")
    chunks = [data[i : i + TXT_STRING_BYTES] for i in range(0, len(data), TXT_STRING_BYTES)] or [b""]
    return " ".join('"' + c.decode("ascii").replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)


# --- the zone --------------------------------------------------------------


def build_zone(s: ZoneSettings) -> list[Record]:
    """Every record the relay needs, in the order they are printed."""
    d = s.domain.rstrip(".") + "."
    records: list[Record] = []

    def add(name: str, rtype: str, value: str, section: str) -> None:
        records.append(Record(f"{name}.{d}" if name else d, rtype, value, section))

    where = "Addresses and mail routing"
    for ip in s.ipv4:
        add("", "A", ip, where)
    for ip in s.ipv6:
        add("", "AAAA", ip, where)
    add("", "MX", f"10 {d}", where)
    add("www", "CNAME", d, where)

    where = "DKIM: other relays accept only mail signed with this key"
    add(f"{s.dkim_selector}._domainkey", "TXT", quote_txt(s.dkim_value), where)

    if s.mta_sts:
        where = "MTA-STS and TLS reporting: senders must use verified TLS"
        policy_id = mta_sts_id(mta_sts_policy(s.domain.rstrip(".")))
        add("mta-sts", "CNAME", d, where)
        add("_mta-sts", "TXT", quote_txt(f"v=STSv1; id={policy_id}"), where)
        rua = s.tlsrpt_rua or f"mailto:postmaster@{s.domain.rstrip('.')}"
        add("_smtp._tls", "TXT", quote_txt(f"v=TLSRPTv1; rua={rua}"), where)

    where = "Sender policy for classic mail servers"
    add("", "TXT", quote_txt("v=spf1 a ~all"), where)
    add("_dmarc", "TXT", quote_txt("v=DMARC1;p=reject;adkim=s;aspf=s"), where)
    add("_adsp._domainkey", "TXT", quote_txt("dkim=discardable"), where)

    where = "Client autoconfiguration (RFC 6186)"
    for service, port in SRV_SERVICES:
        add(service, "SRV", f"0 1 {port} {d}", where)

    if s.caa_issuer:
        where = "Certificate authority: only this CA (and account) may issue for the domain"
        issuer = s.caa_issuer
        if s.acme_account_uri:
            issuer += f";accounturi={s.acme_account_uri}"
        add("", "CAA", f'0 issue "{issuer}"', where)
    return records


def render_zone(records: Sequence[Record], domain: str, dkim_value: str | None = None) -> str:
    """The records in BIND zone-file format, one section per purpose, absolute names."""
    lines = [
        f"; DNS records of the chatmail relay {domain} (made by `chatmail dns`).",
        "; Check what is published with `chatmail dns --check`.",
    ]
    section = None
    for record in records:
        if record.section != section:
            section = record.section
            lines += ["", f"; {section}"]
        lines.append(f"{record.name:<40} {TTL} IN {record.rtype:<5} {record.value}")
        split = dkim_value is not None and len(dkim_value) > TXT_STRING_BYTES
        if split and record.rtype == "TXT" and record.value == quote_txt(dkim_value or ""):
            lines.append(f"; the same DKIM value as one string, for web forms that split it: {dkim_value}")
    return "\n".join(lines) + "\n"


# --- the host's facts ------------------------------------------------------


def host_addresses(runner: Runner = run_command) -> tuple[list[str], list[str]]:
    """The host's global IPv4 and IPv6 addresses (from ``ip -j address show``).

    Loopback, link-local and temporary/deprecated IPv6 privacy addresses are
    left out: other servers must reach the relay at a stable address.
    """
    try:
        interfaces = json.loads(runner(["ip", "-j", "address", "show"]))
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise ZoneError(f"cannot list the host's addresses with `ip` ({exc}); give --ipv4/--ipv6") from None
    v4: list[str] = []
    v6: list[str] = []
    for interface in interfaces:
        for info in interface.get("addr_info", []):
            if info.get("scope") != "global" or info.get("temporary") or info.get("deprecated"):
                continue
            local = info.get("local", "")
            try:
                ip = ipaddress.ip_address(local)
            except ValueError:
                continue
            if ip.is_loopback or ip.is_link_local:
                continue
            target = v4 if ip.version == 4 else v6
            if str(ip) not in target:
                target.append(str(ip))
    return v4, v6


def find_acme_account_uri(accounts_dir: Path = ACME_ACCOUNTS_DIR) -> str | None:
    """The URI of the one ACME account lego has registered here, or None.

    None also when there are several (e.g. a staging and a production
    account): the operator then says which with ``--acme-account-uri``.
    """
    uris: set[str] = set()
    try:
        files = sorted(accounts_dir.glob("**/account.json"))
    except OSError as exc:
        log.debug("cannot search %s: %s", accounts_dir, exc)
        return None
    for path in files:
        try:
            uri = json.loads(path.read_text(encoding="utf-8"))["registration"]["uri"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.debug("no account URI in %s: %s", path, exc)
            continue
        if isinstance(uri, str) and uri:
            uris.add(uri)
    if len(uris) == 1:
        return uris.pop()
    if uris:
        log.warning("%d ACME accounts under %s; pass --acme-account-uri to choose", len(uris), accounts_dir)
    return None


# --- checking --------------------------------------------------------------

Resolve = Callable[[str, str], list[str]]
"""Looks up (name, type) and returns the rdata texts; [] if there is no such record.

Raises :class:`LookupFailed` when the question could not be answered at all."""


class LookupFailed(Exception):
    """The resolver gave no answer (timeout, SERVFAIL): neither present nor absent."""


def system_resolver(timeout: float = 10.0) -> Resolve:
    """A :data:`Resolve` through the resolvers of /etc/resolv.conf (on a relay: its unbound)."""
    resolver = dns.resolver.Resolver()
    resolver.lifetime = timeout

    def resolve(name: str, rtype: str) -> list[str]:
        try:
            answer = resolver.resolve(name, rtype, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return []
        except dns.exception.DNSException as exc:
            raise LookupFailed(str(exc) or type(exc).__name__) from None
        if answer.rrset is None:
            return []
        return [rdata.to_text() for rdata in answer.rrset]

    return resolve


@dataclasses.dataclass(frozen=True)
class CheckRow:
    """One record: what the zone says, what DNS answered, and whether they agree."""

    record: Record
    found: tuple[str, ...]
    ok: bool
    failed: bool = False
    """The lookup itself failed (timeout, SERVFAIL): ``found`` holds the error."""


def _comparable(rtype: str, text: str) -> object:
    """A form in which equal records compare equal: case of names and the split of TXT
    strings do not matter (a DNS provider may re-split a long value)."""
    rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rtype), text, origin=dns.name.root)
    if isinstance(rdata, dns.rdtypes.ANY.TXT.TXT):
        return b"".join(rdata.strings)
    return rdata


EXCLUSIVE_TYPES = frozenset({"A", "AAAA", "MX", "CNAME", "SRV", "CAA"})
"""Types where an answer the zone does not have is itself wrong: a stale address or MX sends
mail elsewhere, another CAA lets another CA issue. Other TXT records beside SPF are normal."""


def check_zone(records: Sequence[Record], resolve: Resolve) -> list[CheckRow]:
    """Look up every record; a record is ok if one of the answers equals it and, for the
    :data:`EXCLUSIVE_TYPES`, no answer at that name and type is foreign to the zone."""
    answers: dict[tuple[str, str], tuple[str, ...] | LookupFailed] = {}
    wanted: dict[tuple[str, str], list[object]] = {}
    for record in records:
        wanted.setdefault((record.name, record.rtype), []).append(_comparable(record.rtype, record.value))
    rows = []
    for record in records:
        key = (record.name, record.rtype)
        if key not in answers:
            try:
                answers[key] = tuple(resolve(record.name, record.rtype))
            except LookupFailed as exc:
                answers[key] = exc
        found = answers[key]
        if isinstance(found, LookupFailed):
            rows.append(CheckRow(record, (f"(lookup failed: {found})",), False, failed=True))
            continue
        values = []
        for text in found:
            try:
                values.append(_comparable(record.rtype, text))
            except dns.exception.DNSException:
                values.append(text)  # unparsable: equals nothing expected
        ok = _comparable(record.rtype, record.value) in values
        if record.rtype in EXCLUSIVE_TYPES:
            ok = ok and all(value in wanted[key] for value in values)
        rows.append(CheckRow(record, found, ok))
    return rows


def _unsplit(rtype: str, text: str) -> str:
    """A TXT value as one string for the table (the split is irrelevant to the reader)."""
    if rtype != "TXT":
        return text
    try:
        value = _comparable(rtype, text)
    except dns.exception.DNSException:
        return text
    return value.decode("ascii", "replace") if isinstance(value, bytes) else text


def format_check(rows: Sequence[CheckRow], width: int = 60) -> str:
    """The check as a table: record, expected, found, ok; then the names of the bad ones."""

    def cut(text: str) -> str:
        return text if len(text) <= width else text[: width - 3] + "..."

    table = [("record", "expected", "found", "ok")]
    for row in rows:
        found = ", ".join(_unsplit(row.record.rtype, f) for f in row.found) or "(none)"
        table.append(
            (
                row.record.label,
                cut(_unsplit(row.record.rtype, row.record.value)),
                cut(found),
                "ok" if row.ok else "FAILED" if row.failed else "WRONG" if row.found else "MISSING",
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(3)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}" for a, b, c, d in table]
    bad = [row for row in rows if not row.ok]
    lines.append("")
    if bad:
        lines.append(f"{len(bad)} of {len(rows)} records missing or wrong:")
        lines += [f"  {row.record.label} {row.record.value}" for row in bad]
    else:
        lines.append(f"all {len(rows)} records are published as expected")
    return "\n".join(lines) + "\n"
