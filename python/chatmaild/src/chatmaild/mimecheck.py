"""Pure checks on raw messages: is it OpenPGP-encrypted, or one of the few exceptions?

A chatmail relay only carries end-to-end encrypted mail. These functions
decide that from the bytes alone (no I/O, no SMTP), so they can be tested
on a corpus of real messages and reused by every transport. They never
raise on garbage: anything that cannot be understood is "not encrypted".

"Encrypted" is judged structurally, without keys: an RFC 3156 PGP/MIME
message whose payload is a sequence of session-key packets (PKESK/SKESK)
followed by exactly one integrity-protected encrypted data packet (SEIPD).
That is what every OpenPGP implementation produces for an encrypted
message, and what cleartext dressed up to look encrypted cannot imitate.
"""

from __future__ import annotations

import binascii
import dataclasses
import email.feedparser
import email.policy
import logging
import re
from collections.abc import Callable, Sequence
from email.message import Message

from .addrparse import AddressError, Mailbox, parse_addr_spec, parse_mailbox

log = logging.getLogger(__name__)

ARMOR_BEGIN = "-----BEGIN PGP MESSAGE-----\r\n"
ARMOR_END = "-----END PGP MESSAGE-----"

TAG_PKESK = 1
TAG_SKESK = 3
TAG_SEIPD = 18

SECUREJOIN_STEPS = ("vc-request", "vg-request")
ASM_SUBJECT = "Autocrypt Setup Message"

REPLY_OK = "250 OK"
REPLY_ENCRYPTION_NEEDED = "523 Encryption Needed: Invalid Unencrypted Mail"

MAX_MIME_PARTS = 1000
"""More parts than this (every header block counts, nested messages too) is refused.

Encrypted chat mail has three; the bound keeps the parse of one hostile
message (100 000 empty parts fit in the size limit) short and small."""
MAX_MIME_DEPTH = 20
"""Multiparts nested deeper than this are refused (chat mail nests two levels)."""
FEED_CHUNK_BYTES = 64 * 1024
REPLY_TOO_MANY_PARTS = f"554 5.6.0 Message has more than {MAX_MIME_PARTS} MIME parts"
REPLY_TOO_DEEP = f"554 5.6.0 MIME parts nested deeper than {MAX_MIME_DEPTH} levels"

AUTO_SUBMITTED_KEYWORD = re.compile(r"^\s*(auto-[A-Za-z0-9-]+)\s*(?:[;(]|$)", re.IGNORECASE)
"""RFC 3834 values that mark mail as automatic: auto-generated, auto-replied, ... (not "no")."""
DSN_REPORT_TYPES = ("delivery-status", "global-delivery-status")
DSN_PART_TYPES = ("message/delivery-status", "message/global-delivery-status")


# --- OpenPGP payload -----------------------------------------------------


def _new_format_length(data: bytes, pos: int) -> tuple[int, int, bool] | None:
    """Read a new-format body length at ``pos``: (length, header size, partial?)."""
    if pos >= len(data):
        return None
    first = data[pos]
    if first < 192:
        return first, 1, False
    if first < 224:
        if pos + 1 >= len(data):
            return None
        return ((first - 192) << 8) + data[pos + 1] + 192, 2, False
    if first == 255:
        if pos + 5 > len(data):
            return None
        return int.from_bytes(data[pos + 1 : pos + 5], "big"), 5, False
    return 1 << (first & 0x1F), 1, True


def _packet_end(data: bytes, pos: int) -> tuple[int, int, int] | None:
    """Return (tag, end offset, body length) of the packet at ``pos``, or None if malformed."""
    header = data[pos]
    if not header & 0x80:
        return None
    pos += 1
    if header & 0x40:
        tag = header & 0x3F
        body = 0
        while True:  # partial body lengths: chunks until a final length
            parsed = _new_format_length(data, pos)
            if parsed is None:
                return None
            length, size, partial = parsed
            pos += size + length
            body += length
            if not partial:
                return tag, pos, body
            if pos > len(data):
                return None
    # Old (legacy) format, still emitted by GnuPG for PKESK packets.
    tag = (header >> 2) & 0x0F
    length_type = header & 0x03
    if length_type == 3:  # indeterminate: up to the end of the data
        return tag, len(data), len(data) - pos
    size = 1 << length_type
    if pos + size > len(data):
        return None
    length = int.from_bytes(data[pos : pos + size], "big")
    return tag, pos + size + length, length


def check_openpgp_packets(data: bytes) -> bool:
    """True iff ``data`` is PKESK/SKESK packets followed by one final SEIPD packet."""
    pos = 0
    while pos < len(data):
        parsed = _packet_end(data, pos)
        if parsed is None:
            return False
        tag, end, body = parsed
        if end > len(data):
            return False
        if end == len(data):
            # An SEIPD packet with no body carries nothing encrypted.
            return tag == TAG_SEIPD and body > 0
        if tag not in (TAG_PKESK, TAG_SKESK):
            return False
        pos = end
    return False


def check_armored_payload(text: str, outgoing: bool) -> bool:
    """Check an ASCII-armored OpenPGP message (CRLF or LF line endings).

    An armor header such as ``Version: ProtonMail`` is tolerated on incoming
    mail (other providers add it) but refused on outgoing mail, which only
    our users' clients produce and which should leak nothing.
    """
    text = text.replace("\r\n", "\n").replace("\n", "\r\n")
    if not text.startswith(ARMOR_BEGIN):
        return False
    body = text[len(ARMOR_BEGIN) :]
    while body.endswith("\r\n"):
        body = body[:-2]
    if not body.endswith(ARMOR_END):
        return False
    body = body[: -len(ARMOR_END)]
    if body.startswith("Version: "):
        if outgoing:
            return False
        body = body.partition("\r\n")[2]
    lines = [line for line in body.split("\r\n") if line]
    if lines and lines[-1].startswith("="):  # CRC24 checksum (optional since RFC 9580)
        lines.pop()
    try:
        binary = binascii.a2b_base64("".join(lines).encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return False
    return check_openpgp_packets(binary)


# --- MIME ----------------------------------------------------------------


class MimeLimitError(ValueError):
    """A message exceeds MAX_MIME_PARTS or MAX_MIME_DEPTH; ``reply`` is the refusal."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


def parse_message(data: bytes) -> Message:
    """Parse raw bytes without the strict header objects of the modern policy.

    compat32 keeps header values as plain strings, so a malformed header in a
    hostile message cannot raise later while we look at it. Parts are
    counted while the parser creates them, so a message with a hundred
    thousand parts is abandoned at the limit instead of built in full;
    MimeLimitError says which limit was hit.
    """
    created = 0

    def counting_factory(policy: email.policy.Policy = email.policy.compat32) -> Message:
        nonlocal created
        created += 1
        if created > MAX_MIME_PARTS:
            raise MimeLimitError(REPLY_TOO_MANY_PARTS)
        return Message(policy)

    parser = email.feedparser.BytesFeedParser(_factory=counting_factory, policy=email.policy.compat32)
    created = 0  # the constructor calls the factory once to probe its signature
    # Fed in slices: each C-level step (decoding, line splitting) then holds the GIL
    # only briefly, so the event loop's thread keeps its turns while a worker parses.
    view = memoryview(data)
    for start in range(0, len(data), FEED_CHUNK_BYTES):
        parser.feed(bytes(view[start : start + FEED_CHUNK_BYTES]))
    msg = parser.close()
    if mime_depth(msg) > MAX_MIME_DEPTH:
        raise MimeLimitError(REPLY_TOO_DEEP)
    return msg


def mime_depth(msg: Message) -> int:
    """Nesting depth of the part tree (1 for a single part), counted without recursion."""
    deepest = 0
    stack = [(msg, 1)]
    while stack:
        part, depth = stack.pop()
        deepest = max(deepest, depth)
        payload = part.get_payload()
        if isinstance(payload, list):
            stack.extend((sub, depth + 1) for sub in payload if isinstance(sub, Message))
    return deepest


def _decoded_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    return payload.decode("latin-1")


def _subparts(msg: Message) -> list[Message]:
    """The direct sub-parts of a multipart message ([] for anything else)."""
    parts = msg.get_payload() if msg.is_multipart() else None
    if not isinstance(parts, list):
        return []
    return [part for part in parts if isinstance(part, Message)]


def _header(msg: Message, name: str) -> str:
    value = msg.get(name)
    return "" if value is None else str(value).strip()


def header_values(msg: Message, name: str) -> list[str]:
    """Every value of the top-level header ``name``, as UTF-8 text (RFC 6532).

    Read from the raw items, so that a header with 8-bit bytes is not turned
    into an encoded-word object; bytes that are not UTF-8 raise AddressError.
    """
    values = []
    for key, value in msg.raw_items():
        if key.strip().lower() == name:
            try:
                values.append(value.encode("ascii", "surrogateescape").decode("utf-8"))
            except UnicodeError:
                raise AddressError(f"{name} header is not UTF-8") from None
    return values


def single_mailbox(msg: Message, name: str) -> Mailbox:
    """The one mailbox of header ``name``: exactly one such header with exactly one address.

    Two ``From:`` headers, or ``From: <me>, <victim>``, are not "the first
    one wins" but an error: readers disagree about which one they show.
    """
    values = header_values(msg, name)
    if len(values) != 1:
        raise AddressError(f"expected one {name} header, found {len(values)}")
    return parse_mailbox(values[0])


def from_address(msg: Message) -> Mailbox | None:
    """The single ``From:`` mailbox, or None if there is not exactly one."""
    try:
        return single_mailbox(msg, "from")
    except AddressError:
        return None


def _one_content_type(*parts: Message) -> bool:
    """Each part has exactly one Content-Type header.

    With two, Python reads the first and some mail clients the last: a
    message could pass here as encrypted and be shown as cleartext.
    """
    return all(len(part.get_all("content-type", [])) == 1 for part in parts)


def check_encrypted(msg: Message, outgoing: bool) -> bool:
    """True iff ``msg`` is a PGP/MIME encrypted message (RFC 3156) with a real payload."""
    try:
        if not msg.is_multipart() or msg.get_content_type() != "multipart/encrypted":
            return False
        parts = _subparts(msg)
        if len(parts) != 2 or not _one_content_type(msg, *parts):
            return False
        version, payload = parts
        if version.is_multipart() or payload.is_multipart():
            return False
        if version.get_content_type() != "application/pgp-encrypted":
            return False
        if _decoded_text(version).strip() != "Version: 1":
            return False
        if payload.get_content_type() != "application/octet-stream":
            return False
        return check_armored_payload(_decoded_text(payload), outgoing)
    except Exception:  # never let a hostile message crash the filter
        log.debug("error while checking encryption", exc_info=True)
        return False


def is_securejoin(msg: Message) -> bool:
    """True for the first, necessarily unencrypted, steps of Delta Chat's Secure-Join."""
    try:
        step = _header(msg, "Secure-Join")
        if step not in SECUREJOIN_STEPS or not msg.is_multipart():
            return False
        parts = _subparts(msg)
        if len(parts) != 1 or not _one_content_type(msg, *parts):
            return False
        (part,) = parts
        if part.is_multipart() or part.get_content_type() != "text/plain":
            return False
        body = _decoded_text(part).strip().lower()
        return body in (f"secure-join: {s}" for s in SECUREJOIN_STEPS)
    except Exception:
        log.debug("error while checking securejoin", exc_info=True)
        return False


def is_mailer_daemon_report(msg: Message, sender: Mailbox) -> bool:
    """True for a delivery status notification (a bounce) from a mail server.

    All of it must hold: ``Auto-Submitted`` with a real automatic value
    (``auto-replied``, ``auto-generated``; ``no`` says the opposite), a
    ``mailer-daemon@`` sender, and the DSN structure of RFC 3464: a
    ``multipart/report`` of a delivery-status type with the machine-readable
    status part.
    """
    try:
        if not AUTO_SUBMITTED_KEYWORD.match(_header(msg, "Auto-Submitted")):
            return False
        if sender.local.lower() != "mailer-daemon":
            return False
        if msg.get_content_type() != "multipart/report":
            return False
        if str(msg.get_param("report-type", "")).lower() not in DSN_REPORT_TYPES:
            return False
        return any(part.get_content_type() in DSN_PART_TYPES for part in _subparts(msg))
    except Exception:
        return False


def is_self_sent_setup_message(msg: Message, mail_from: str, rcpt_tos: Sequence[str]) -> bool:
    """True for an Autocrypt Setup Message a user sends to themself (key transfer)."""
    try:
        return (
            len(rcpt_tos) == 1
            and rcpt_tos[0].lower() == mail_from.lower()
            and _header(msg, "Subject") == ASM_SUBJECT
            and msg.get_content_type() == "multipart/mixed"
        )
    except Exception:
        return False


# --- verdicts ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What to do with one message.

    ``reply`` is the SMTP reply line for the client when the message is
    refused. When accepted, ``reinject_from`` is the envelope sender to use
    (``""`` is the null sender) and ``kind`` names the rule that let it pass.
    ``sender`` is the ``From:`` mailbox, which the origin check needs.
    """

    accept: bool
    reply: str
    kind: str
    reinject_from: str = ""
    sender: Mailbox | None = None

    @property
    def from_addr(self) -> str:
        """The ``From:`` address as text ("" if refused before it was read)."""
        return self.sender.addr_spec if self.sender is not None else ""


def _reject(reply: str, kind: str) -> Verdict:
    return Verdict(False, reply, kind)


def _parse_and_check_from(data: bytes) -> tuple[Message | None, Mailbox | None, Verdict | None]:
    try:
        msg = parse_message(data)
    except MimeLimitError as exc:
        return None, None, _reject(exc.reply, "mime-limit")
    except RecursionError:
        return None, None, _reject(REPLY_TOO_DEEP, "mime-limit")
    except Exception as exc:
        return None, None, _reject(f"500 Failed to parse message: {type(exc).__name__}", "unparseable")
    try:
        sender = single_mailbox(msg, "from")
    except AddressError as exc:
        return msg, None, _reject(f"500 Invalid FROM header: {exc}", "no-from")
    return msg, sender, None


def _envelope_mailbox(mail_from: str) -> Mailbox | None:
    try:
        return parse_addr_spec(mail_from)
    except AddressError:
        return None


def matches_passthrough(addr: str, entries: Sequence[str]) -> bool:
    """``addr`` is one of ``entries``: an exact address, or ``@domain`` for a whole domain.

    Compared without regard to case; ``entries`` are lower case (chatmaild.config).
    """
    addr = addr.lower()
    return any(addr == entry or (entry.startswith("@") and addr.endswith(entry)) for entry in entries)


def check_outgoing(
    mail_from: str,
    rcpt_tos: Sequence[str],
    data: bytes,
    passthrough_senders: Sequence[str] = (),
    passthrough_recipients: Sequence[str] = (),
) -> Verdict:
    """Judge a message one of our users submits (encrypted, Secure-Join or self-sent ASM only).

    The one ``From:`` mailbox, and the one ``Sender:`` mailbox if there is
    such a header, must be the envelope sender (the login, which Postfix
    checked): otherwise a user could sign mail as somebody else.

    The operator's exceptions, as the reference relay has them: a sender in
    ``passthrough_senders`` may send cleartext, and so may anyone to
    recipients that *all* match ``passthrough_recipients`` (exact addresses
    or ``@domain``), e.g. a cleartext contact address of the operator. The
    From checks above hold for them too.
    """
    envelope = _envelope_mailbox(mail_from)
    if envelope is None:
        return _reject(f"500 Invalid envelope sender <{mail_from}>", "bad-envelope")
    msg, sender, refusal = _parse_and_check_from(data)
    if refusal is not None:
        return refusal
    assert msg is not None and sender is not None
    if not sender.same_address(envelope):
        return _reject(f"500 Invalid FROM <{sender.addr_spec}> for <{mail_from}>", "forged-from")
    if header_values(msg, "sender"):
        try:
            sender_header = single_mailbox(msg, "sender")
        except AddressError as exc:
            return _reject(f"500 Invalid Sender header: {exc}", "forged-from")
        if not sender_header.same_address(envelope):
            return _reject(f"500 Invalid Sender <{sender_header.addr_spec}> for <{mail_from}>", "forged-from")
    if check_encrypted(msg, outgoing=True):
        return Verdict(True, REPLY_OK, "encrypted", mail_from, sender)
    if is_securejoin(msg):
        return Verdict(True, REPLY_OK, "securejoin", mail_from, sender)
    if mail_from.lower() in passthrough_senders:
        return Verdict(True, REPLY_OK, "passthrough-sender", mail_from, sender)
    if is_self_sent_setup_message(msg, mail_from, rcpt_tos):
        return Verdict(True, REPLY_OK, "setup-message", mail_from, sender)
    if rcpt_tos and all(matches_passthrough(rcpt, passthrough_recipients) for rcpt in rcpt_tos):
        return Verdict(True, REPLY_OK, "passthrough-recipients", mail_from, sender)
    return _reject(REPLY_ENCRYPTION_NEEDED, "cleartext")


def check_incoming(
    mail_from: str,
    rcpt_tos: Sequence[str],
    data: bytes,
    accepts_cleartext: Callable[[str], bool],
) -> Verdict:
    """Judge a message arriving from another server.

    ``accepts_cleartext(rcpt)`` says whether a recipient still takes
    unencrypted mail; cleartext is delivered only if all recipients do.
    A sender that disagrees with ``From:`` is not refused (forwarders do
    that), but the message is passed on with the null sender so that no
    bounce goes to a return path that may be forged.
    """
    msg, sender, refusal = _parse_and_check_from(data)
    if refusal is not None:
        return refusal
    assert msg is not None and sender is not None
    envelope = _envelope_mailbox(mail_from) if mail_from else None
    reinject_from = mail_from if envelope is not None and envelope.same_address(sender) else ""
    if check_encrypted(msg, outgoing=False):
        return Verdict(True, REPLY_OK, "encrypted", reinject_from, sender)
    if is_securejoin(msg):
        return Verdict(True, REPLY_OK, "securejoin", reinject_from, sender)
    if is_mailer_daemon_report(msg, sender):
        return Verdict(True, REPLY_OK, "mailer-daemon", reinject_from, sender)
    if all(accepts_cleartext(rcpt) for rcpt in rcpt_tos):
        return Verdict(True, REPLY_OK, "cleartext-allowed", reinject_from, sender)
    return _reject(REPLY_ENCRYPTION_NEEDED, "cleartext")
