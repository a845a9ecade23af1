"""One parser for mail addresses, the same on every Python version.

The relay's verdicts hang on addresses: whether ``From:`` is the
submitting user, which domain must have DKIM-signed a message, whether an
IP-literal sender is the connecting client. ``email.utils.parseaddr`` and
``getaddresses`` cannot decide that: their rules changed within 3.11 and
3.13 (lenient fallbacks on one, strict "no address" on the other), so the
same message was accepted by one Python and refused by the other, and the
lenient one read ``From: <me>, <victim>`` or ``From: me@dom <victim@dom>``
as a single address. This module is a small, explicit RFC 5322 parser
(section 3.4, with RFC 6532 UTF-8) that either returns exactly what the
header says or raises :class:`AddressError`; it never guesses.

Deliberate restrictions, all on the side of refusing:

* groups (``undisclosed-recipients:;``) are refused: ``From:`` and
  ``Sender:`` hold mailboxes only;
* a domain literal must be an IP address as SMTP writes it (RFC 5321
  4.1.3): ``[192.0.2.1]`` or ``[IPv6:2001:db8::1]``; general literals,
  scope ids and untagged IPv6 are refused;
* a domain name consists of letters, digits, ``-`` and ``_`` labels (the
  ``_`` for test relays), or non-ASCII letters (IDN U-labels);
* control characters, NUL, undecodable bytes and line breaks that are not
  header folding are refused;
* lengths are bounded (RFC 5321: local part 64 octets, address 254), and so
  is the header value, so the work per header is small and linear.

The only obsolete syntax accepted is a ``.`` inside a display name
(``John Q. Public <jqp@example.org>``), which is common in real mail.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re

MAX_HEADER_CHARS = 8192
"""Longer address headers are refused rather than parsed."""
MAX_LOCAL_PART_OCTETS = 64
MAX_ADDRESS_OCTETS = 254
MAX_COMMENT_DEPTH = 32

_ATEXT_ASCII = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~")
_DOMAIN_LABEL = re.compile(r"^(?:[A-Za-z0-9_]|[^\x00-\x7f])(?:[A-Za-z0-9_-]|[^\x00-\x7f])*$")
_FOLD = re.compile(r"\r?\n(?=[ \t])")


class AddressError(ValueError):
    """The text is not what the caller asked for (one mailbox, a list, an addr-spec)."""


@dataclasses.dataclass(frozen=True)
class Mailbox:
    """One mailbox: the local part (unquoted), the domain and the display name."""

    local: str
    domain: str
    display_name: str = ""

    @property
    def addr_spec(self) -> str:
        """``local@domain`` with the local part quoted only where RFC 5322 requires it."""
        return f"{_quote_local(self.local)}@{self.domain}"

    @property
    def ip_literal(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The address of an IP-literal domain, else None."""
        return domain_literal_ip(self.domain)

    def same_address(self, other: Mailbox) -> bool:
        """True if both name the same mailbox; compared without regard to ASCII case.

        Local parts are compared case-insensitively, as everywhere on the
        relay (accounts are lower case and Postfix matches logins that way).
        """
        return self.addr_spec.lower() == other.addr_spec.lower()


def _quote_local(local: str) -> str:
    if _is_dot_atom(local):
        return local
    escaped = local.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _is_atext(char: str) -> bool:
    return char in _ATEXT_ASCII or (ord(char) > 0x7F and not _is_forbidden(char))


def _is_forbidden(char: str) -> bool:
    """Characters never allowed anywhere: controls, DEL, surrogates (undecodable bytes)."""
    code = ord(char)
    return code < 0x20 and char != "\t" or code == 0x7F or 0xD800 <= code <= 0xDFFF or 0x80 <= code < 0xA0


def _is_dot_atom(text: str) -> bool:
    return bool(text) and all(atom and all(_is_atext(c) for c in atom) for atom in text.split("."))


def domain_literal_ip(domain: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address of ``[192.0.2.1]`` or ``[IPv6:2001:db8::1]``; None for anything else."""
    if len(domain) < 3 or domain[0] != "[" or domain[-1] != "]":
        return None
    inner = domain[1:-1]
    if not inner.isascii() or "%" in inner:
        return None
    try:
        if inner[:5].lower() == "ipv6:":
            return ipaddress.IPv6Address(inner[5:])
        return ipaddress.IPv4Address(inner)
    except ValueError:
        return None


def _check_domain(domain: str) -> None:
    if domain.startswith("["):
        if domain_literal_ip(domain) is None:
            raise AddressError(f"domain literal is not an IP address: {domain[:80]!r}")
        return
    labels = domain.split(".")
    if not all(_DOMAIN_LABEL.match(label) and not label.endswith("-") for label in labels):
        raise AddressError(f"invalid domain: {domain[:80]!r}")


# --- tokens ------------------------------------------------------------------

_ATOM, _QSTRING, _LITERAL, _SPECIAL = "atom", "qstring", "literal", "special"


@dataclasses.dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    space_before: bool
    """True if white space or a comment separates this token from the previous one."""


def _tokenize(text: str) -> list[_Token]:
    """Split a header value into atoms, quoted strings, domain literals and specials.

    Linear in the length of ``text``; comments and white space are dropped,
    but remembered as ``space_before`` of the next token.
    """
    if len(text) > MAX_HEADER_CHARS:
        raise AddressError(f"address header longer than {MAX_HEADER_CHARS} characters")
    text = _FOLD.sub("", text)
    tokens: list[_Token] = []
    pos, end, space = 0, len(text), False
    while pos < end:
        char = text[pos]
        if char in " \t":
            pos, space = pos + 1, True
        elif char == "(":
            pos, space = _skip_comment(text, pos), True
        elif char == '"':
            pos, content = _read_quoted(text, pos)
            tokens.append(_Token(_QSTRING, content, space))
            space = False
        elif char == "[":
            close = text.find("]", pos)
            if close < 0:
                raise AddressError("unterminated domain literal")
            literal = text[pos : close + 1]
            if any(c in "[\\" or _is_forbidden(c) or c in " \t\r\n" for c in literal[1:-1]):
                raise AddressError("invalid character in a domain literal")
            tokens.append(_Token(_LITERAL, literal, space))
            pos, space = close + 1, False
        elif char in '<>@,;:.])\\':
            tokens.append(_Token(_SPECIAL, char, space))
            pos, space = pos + 1, False
        elif _is_atext(char):
            start = pos
            while pos < end and _is_atext(text[pos]):
                pos += 1
            tokens.append(_Token(_ATOM, text[start:pos], space))
            space = False
        else:
            raise AddressError(f"invalid character {char!r} in an address header")
    return tokens


def _skip_comment(text: str, pos: int) -> int:
    depth = 0
    while pos < len(text):
        char = text[pos]
        if char == "\\":
            pos += 2
            continue
        if char == "(":
            depth += 1
            if depth > MAX_COMMENT_DEPTH:
                raise AddressError("comments nested too deeply")
        elif char == ")":
            depth -= 1
            if depth == 0:
                return pos + 1
        elif _is_forbidden(char) or char in "\r\n":
            raise AddressError("invalid character in a comment")
        pos += 1
    raise AddressError("unterminated comment")


def _read_quoted(text: str, pos: int) -> tuple[int, str]:
    out: list[str] = []
    pos += 1
    while pos < len(text):
        char = text[pos]
        if char == '"':
            return pos + 1, "".join(out)
        if char == "\\":
            if pos + 1 >= len(text):
                break
            char = text[pos + 1]
            pos += 1
        if (_is_forbidden(char) and char != "\t") or char in "\r\n":
            raise AddressError("invalid character in a quoted string")
        out.append(char)
        pos += 1
    raise AddressError("unterminated quoted string")


# --- grammar -----------------------------------------------------------------


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def at_special(self, char: str) -> bool:
        token = self.peek()
        return token is not None and token.kind == _SPECIAL and token.text == char

    def expect_special(self, char: str) -> None:
        if not self.at_special(char):
            token = self.peek()
            found = "the end" if token is None else repr(token.text[:40])
            raise AddressError(f"expected {char!r}, found {found}")
        self.pos += 1

    def mailbox(self) -> Mailbox:
        if self.at_special("<"):
            return self.angle_addr("")
        words = self.phrase_or_local()
        if self.at_special("<"):
            return self.angle_addr(_display_name(words))
        if self.at_special("@"):
            return self.finish_addr_spec(words)
        if self.at_special(":"):
            raise AddressError("groups are not allowed here")
        raise AddressError("expected an address")

    def phrase_or_local(self) -> list[_Token]:
        """Words and dots up to ``<`` or ``@`` (a display name or a local part)."""
        words: list[_Token] = []
        while True:
            token = self.peek()
            if token is None:
                break
            if token.kind in (_ATOM, _QSTRING) or (token.kind == _SPECIAL and token.text == "."):
                words.append(token)
                self.pos += 1
            else:
                break
        if not words:
            raise AddressError("expected a display name or an address")
        return words

    def angle_addr(self, display_name: str) -> Mailbox:
        self.expect_special("<")
        words = self.phrase_or_local()
        mailbox = self.finish_addr_spec(words, display_name)
        self.expect_special(">")
        return mailbox

    def finish_addr_spec(self, words: list[_Token], display_name: str = "") -> Mailbox:
        local = _local_part(words)
        self.expect_special("@")
        token = self.peek()
        if token is None:
            raise AddressError("missing domain")
        if token.kind == _LITERAL:
            self.pos += 1
            domain = token.text
        else:
            parts: list[str] = []
            while True:
                token = self.peek()
                if token is None or token.kind != _ATOM or (parts and token.space_before):
                    raise AddressError("invalid domain")
                parts.append(token.text)
                self.pos += 1
                dot = self.peek()
                if dot is None or dot.kind != _SPECIAL or dot.text != "." or dot.space_before:
                    break
                self.pos += 1
            domain = ".".join(parts)
        _check_domain(domain)
        if len(local.encode("utf-8")) > MAX_LOCAL_PART_OCTETS:
            raise AddressError(f"local part longer than {MAX_LOCAL_PART_OCTETS} octets")
        mailbox = Mailbox(local, domain, display_name)
        if len(mailbox.addr_spec.encode("utf-8")) > MAX_ADDRESS_OCTETS:
            raise AddressError(f"address longer than {MAX_ADDRESS_OCTETS} octets")
        return mailbox


def _local_part(words: list[_Token]) -> str:
    """A local part is one quoted string or a dot-atom (no white space inside)."""
    if len(words) == 1 and words[0].kind == _QSTRING:
        if not words[0].text:
            raise AddressError("empty local part")
        return words[0].text
    expect_atom = True
    for index, token in enumerate(words):
        if index and token.space_before:
            raise AddressError("white space inside a local part")
        if expect_atom != (token.kind == _ATOM):
            raise AddressError("invalid local part")
        expect_atom = not expect_atom
    if expect_atom:  # ends with a dot
        raise AddressError("invalid local part")
    return "".join(token.text for token in words)


def _display_name(words: list[_Token]) -> str:
    if words[0].kind == _SPECIAL:
        raise AddressError("display name starts with a dot")
    parts: list[str] = []
    for token in words:
        if parts and token.space_before:
            parts.append(" ")
        parts.append(token.text)
    return "".join(parts)


def parse_mailbox_list(text: str) -> list[Mailbox]:
    """All mailboxes of a ``From:``-style header value; AddressError unless all parse."""
    parser = _Parser(_tokenize(text))
    mailboxes = [parser.mailbox()]
    while parser.at_special(","):
        parser.pos += 1
        mailboxes.append(parser.mailbox())
    if parser.peek() is not None:
        raise AddressError(f"unexpected {parser.peek().text[:40]!r} after an address")  # type: ignore[union-attr]
    return mailboxes


def parse_mailbox(text: str) -> Mailbox:
    """Exactly one mailbox (``Name <a@b>`` or ``a@b``); a list of two is an error."""
    mailboxes = parse_mailbox_list(text)
    if len(mailboxes) != 1:
        raise AddressError(f"expected one address, found {len(mailboxes)}")
    return mailboxes[0]


def parse_addr_spec(text: str) -> Mailbox:
    """A bare ``local@domain`` as in an SMTP envelope: no display name, comments or spaces."""
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    parser = _Parser(_tokenize(text))
    # A comment or space before a token shows as its space_before; a trailing comment ends in ")".
    if any(token.space_before for token in parser.tokens) or text.endswith(")"):
        raise AddressError("white space or comment in an envelope address")
    words = parser.phrase_or_local()
    mailbox = parser.finish_addr_spec(words)
    if parser.peek() is not None:
        raise AddressError("unexpected text after the envelope address")
    return mailbox
