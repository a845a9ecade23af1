"""The filter's SMTP client towards Postfix's reinjection listener.

Every accepted message goes back to Postfix over one loopback SMTP session
that is kept for the next message (:class:`chatmaild.filtermail.ReinjectPool`).
This client does only what that needs: EHLO once, then per message MAIL,
RCPT, DATA and the body. It exists because a general-purpose client cost
the filter a fifth of its time on the event loop (profile of aiosmtplib
5.1: every address parsed twice with the email package, the body run
twice through two regular expressions, and four round trips per message).
Here:

* MAIL, every RCPT and DATA go out in one write when the server offers
  PIPELINING (RFC 2920; Postfix always does), so a message costs two round
  trips; without PIPELINING, one command at a time;
* line endings are made CRLF and leading dots doubled with ``bytes``
  methods in C; the bytes that reach Postfix are the same as before: a
  lone CR or LF becomes CRLF, the body ends with CRLF (a test compares
  with aiosmtplib's output);
* an address goes on the command line as ``<addr>``, written as aiosmtpd
  parsed it from our own client's command; one with a control character
  (CR, LF, NUL, ...), which could end the command, is refused with
  ValueError before anything is sent: it cannot be a real envelope address.

A refusal by Postfix raises :class:`Refused` with its code and text, which
the filter passes back to its own client; a broken connection or a reply
that is not SMTP raises ``OSError`` (a ``ConnectionError`` or
``TimeoutError``), which the filter turns into a 4xx so the sender retries.
"""

from __future__ import annotations

import asyncio
import re

EHLO_NAME = b"localhost"
"""Our name in EHLO: the reinjection listeners apply no HELO restrictions (config/postfix.nix)."""
MAX_REPLY_LINES = 100
"""More lines than this in one reply is not an SMTP server talking."""
_COMMAND_BREAKERS = re.compile(r"[\x00-\x1f\x7f]")
"""Characters that could end or reshape a command line if written into an address."""


class Refused(Exception):
    """The server answered with an error; ``code`` and ``message`` are its reply."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message


class RecipientsRefused(Refused):
    """Every recipient was refused; ``code`` and ``message`` are the first refusal."""


class ProtocolError(ConnectionError):
    """The peer's reply is not SMTP; the session cannot go on."""


def normalize_line_endings(data: bytes) -> bytes:
    """``data`` with every lone CR or LF made CRLF, ending with CRLF (as SMTP carries it)."""
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
        # Rare: mark the CRLFs, make every remaining CR and LF a CRLF, then restore.
        # NUL cannot be a marker (it may be in the message), so split instead.
        pieces = data.split(b"\r\n")
        data = b"\r\n".join(piece.replace(b"\r", b"\n").replace(b"\n", b"\r\n") for piece in pieces)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def _dot_stuffed(data: bytes) -> bytes:
    """The DATA payload of a normalized message: leading dots doubled, then the final ``.``."""
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


def address_argument(address: str) -> bytes:
    """``<address>`` for MAIL FROM or RCPT TO ("" is the null sender ``<>``).

    ASCII only, as before (the reinjection session does not use SMTPUTF8):
    a UnicodeEncodeError for anything else.
    """
    if _COMMAND_BREAKERS.search(address):
        raise ValueError("address with characters not allowed on an SMTP command line")
    return b"<" + address.encode("ascii") + b">"


class ReinjectClient:
    """One SMTP session to the reinjection listener; see the module docstring."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.extensions: dict[str, str] = {}
        self._closed = False

    @classmethod
    async def connect(cls, host: str, port: int, timeout: float) -> ReinjectClient:
        """Open a session: connect, read the greeting, EHLO."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        client = cls(reader, writer, timeout)
        try:
            code, lines = await client._reply()
            if code != 220:
                raise ConnectionError(f"greeting {code} {' '.join(lines)}")
            client._write(b"EHLO " + EHLO_NAME + b"\r\n")
            code, lines = await client._reply()
            if code != 250:
                raise Refused(code, "\n".join(lines))
            for line in lines[1:]:
                keyword, _, parameters = line.partition(" ")
                client.extensions[keyword.upper()] = parameters
        except BaseException:
            client.close()
            raise
        return client

    @property
    def is_connected(self) -> bool:
        return not self._closed and not self.writer.is_closing()

    def close(self) -> None:
        """Drop the connection at once."""
        self._closed = True
        self.writer.close()

    async def quit(self) -> None:
        """End the session politely (QUIT and its reply), then close."""
        try:
            self._write(b"QUIT\r\n")
            await self._reply()
        finally:
            self.close()

    async def sendmail(self, mail_from: str, rcpt_tos: list[str], data: bytes) -> dict[str, tuple[int, str]]:
        """Deliver one message; the recipients refused, by address (the others got it).

        Raises :class:`Refused` if the sender, the DATA command or the
        message was refused, :class:`RecipientsRefused` (with the first
        refusal) if every recipient was; the session must not be reused
        after either.
        """
        if not rcpt_tos:
            raise ValueError("no recipients")
        message = normalize_line_endings(data)
        mail = b"MAIL FROM:" + address_argument(mail_from)
        if "SIZE" in self.extensions:
            mail += b" SIZE=%d" % len(message)
        rcpts = [b"RCPT TO:" + address_argument(rcpt) + b"\r\n" for rcpt in rcpt_tos]
        if "PIPELINING" in self.extensions:
            self._write(b"".join([mail, b"\r\n", *rcpts, b"DATA\r\n"]))
            mail_reply = await self._reply()
            rcpt_replies = [await self._reply() for _ in rcpts]
            data_reply: tuple[int, list[str]] | None = await self._reply()
        else:
            self._write(mail + b"\r\n")
            mail_reply = await self._reply()
            rcpt_replies, data_reply = [], None
            if mail_reply[0] == 250:
                for command in rcpts:
                    self._write(command)
                    rcpt_replies.append(await self._reply())
                if any(code in (250, 251) for code, _ in rcpt_replies):
                    self._write(b"DATA\r\n")
                    data_reply = await self._reply()
        code, lines = mail_reply
        if code != 250:
            raise Refused(code, "\n".join(lines))
        refused: dict[str, tuple[int, str]] = {}
        for rcpt, (code, lines) in zip(rcpt_tos, rcpt_replies):
            if code not in (250, 251):
                refused[rcpt] = (code, "\n".join(lines))
        if len(refused) == len(rcpt_tos):
            raise RecipientsRefused(*refused[rcpt_tos[0]])
        assert data_reply is not None
        code, lines = data_reply
        if code != 354:
            raise Refused(code, "\n".join(lines))
        self._write(_dot_stuffed(message))
        await self.writer.drain()
        code, lines = await self._reply()
        if code != 250:
            raise Refused(code, "\n".join(lines))
        return refused

    def _write(self, data: bytes) -> None:
        if not self.is_connected:
            raise ConnectionError("the reinjection session is closed")
        self.writer.write(data)

    async def _reply(self) -> tuple[int, list[str]]:
        """Read one reply: its code and the text of each line."""
        lines: list[str] = []
        code = 0
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    line = await self.reader.readuntil(b"\n")
                    text = line.rstrip(b"\r\n").decode("utf-8", "replace")
                    if len(text) < 3 or not text[:3].isdigit() or text[3:4] not in ("", " ", "-"):
                        raise ProtocolError(f"not an SMTP reply: {text[:40]!r}")
                    if (code and int(text[:3]) != code) or len(lines) >= MAX_REPLY_LINES:
                        raise ProtocolError("malformed multi-line reply")
                    code = int(text[:3])
                    lines.append(text[4:])
                    if text[3:4] != "-":
                        return code, lines
        except asyncio.IncompleteReadError:
            self.close()
            raise ConnectionError("the reinjection listener closed the connection") from None
        except asyncio.LimitOverrunError:
            self.close()
            raise ProtocolError("reply line too long") from None
        except BaseException:
            self.close()
            raise
