"""filtermail: Postfix's before-queue filter that lets only encrypted mail through.

Postfix hands every message to this SMTP server (``smtpd_proxy_filter``)
before it accepts it, so a refusal here reaches the sending client directly
and no bounce is ever generated for it. Accepted messages are passed back to
a second Postfix listener ("reinjection") byte for byte, except that
outgoing mail's ``Subject:`` becomes ``[...]`` (:func:`hide_subject`).

Two modes, one process each:

* ``outgoing`` sits behind submission: our own users may send only
  encrypted mail (plus Secure-Join requests and self-sent Autocrypt Setup
  Messages), and only under their own address.
* ``incoming`` sits behind port 25: other servers may deliver encrypted
  mail, bounces, and cleartext to recipients that still accept it, and
  only with a DKIM signature of the ``From:`` domain. The same checks
  also serve relays that deliver over HTTPS (:mod:`chatmaild.mxdeliv`).

The decisions themselves live in :mod:`chatmaild.mimecheck`; this module is
the SMTP plumbing around them, on one asyncio event loop. Parsing a message
is CPU work (a 20 MB message of short lines takes seconds), so the checks
run in a small thread pool: the loop keeps serving every other session
meanwhile.

Postfix tells the filter the real client's address with XFORWARD (the
filter announces it in its EHLO reply, and Postfix then sends it before
each transaction); the origin check needs it for IP-literal senders.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import re
import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import email._header_value_parser
import email.errors

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, syntax

from . import metrics, mimecheck
from .reinject import ReinjectClient, Refused
from .cli import parse_args_and_config, run_daemon
from .config import Config
from .logsetup import add_verbose_flag
from .ratelimit import RateLimiter, format_until

if TYPE_CHECKING:
    # dkimpy and dnspython are imported by incoming mode only: outgoing mode never
    # verifies a signature, and they cost its process memory for nothing.
    from . import dkimcheck

log = logging.getLogger(__name__)

LISTEN_HOST = "127.0.0.1"
REINJECT_HOST = "127.0.0.1"
REINJECT_TIMEOUT_SECONDS = 60.0
HTTP_BACKLOG = 128
"""Deliveries over HTTPS (from nginx) the kernel queues before the receiver accepts them."""
QUIT_TIMEOUT_SECONDS = 10.0
"""How long a reinjection session's QUIT may take; nobody waits for it."""
MODES = ("outgoing", "incoming")
NULL_SENDER = "<>"

# Delivery status notification parameters (RFC 3461) on MAIL FROM. We do not
# act on them, and Postfix sends them through the proxy filter.
MAIL_DSN_PARAMETERS = frozenset({"RET", "ENVID"})

MIME_WORKERS = 4
"""Threads that parse and judge messages, so that no message is parsed on the event loop."""

RECIPIENT_DELIMITER = "+"
"""Postfix's ``recipient_delimiter`` (config/postfix.nix): ``bob+x@`` is delivered to ``bob@``.

Kept here until chatmail.ini carries it; it must equal the Postfix setting."""

XFORWARD_ATTRIBUTES = frozenset({"NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE"})
"""The attributes of Postfix's XFORWARD command (XFORWARD_README); only ADDR is used."""
EHLO_XFORWARD = "250-XFORWARD ADDR"
_XTEXT_HEX = re.compile(r"\+([0-9A-F]{2})")
# A Subject header field with its folded continuation lines (RFC 5322 2.2.3).
_SUBJECT_FIELD = re.compile(rb"^subject[ \t]*:[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*", re.IGNORECASE | re.MULTILINE)
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def hide_subject(data: bytes) -> bytes:
    """The message with every ``Subject:`` field of its header replaced by ``Subject: [...]``.

    Nothing about what a user writes leaves the relay; encrypting clients
    put the real subject inside the encrypted part anyway. Done here and not
    with a Postfix header_checks REPLACE, because Postfix logs every REPLACE
    with the original header: the subject would land in the relay's log.
    Only the header is touched (up to the first empty line), with searches
    in C whatever its size.
    """
    end = _HEADER_END.search(data)
    header_end = end.start() if end is not None else len(data)
    header = _SUBJECT_FIELD.sub(b"Subject: [...]", data[:header_end])
    return header + data[header_end:]


class ParameterTolerantSMTP(SMTP):
    """aiosmtpd's SMTP server, but accepting ESMTP parameters it does not implement.

    aiosmtpd refuses ``RCPT TO:<a@b> NOTIFY=NEVER ORCPT=rfc822;a@b`` with
    ``555 RCPT TO parameters not recognized``, because it implements no RCPT
    parameters at all, and likewise ``RET=``/``ENVID=`` on MAIL FROM. Postfix
    and other MTAs send these delivery-status parameters, and a filter that
    refuses them refuses the mail. We still check their syntax, but then
    ignore them; they stay visible in ``envelope.rcpt_options``.
    aiosmtpd offers no public hook for this, so the private ``_getparams``
    is overridden, and a test pins the behaviour across aiosmtpd releases.
    """

    _in_rcpt = False

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        self._in_rcpt = True
        try:
            await super().smtp_RCPT(arg)
        finally:
            self._in_rcpt = False

    def _getparams(self, params: Sequence[str]) -> dict[str, str | bool] | None:
        parsed = super()._getparams(params)
        if parsed is None:
            return None
        if self._in_rcpt:
            return {}
        return {key: value for key, value in parsed.items() if key not in MAIL_DSN_PARAMETERS}

    @syntax("XFORWARD attribute=value ...")
    async def smtp_XFORWARD(self, arg: str | None) -> None:
        """Record the real client's attributes that Postfix forwards (XFORWARD_README).

        Only loopback clients reach the filter; like the rest of the
        envelope, what they say is trusted. Not allowed inside a transaction.
        """
        assert self.session is not None and self.envelope is not None
        if self.envelope.mail_from is not None:
            await self.push("503 5.5.1 Error: XFORWARD not allowed in a mail transaction")
            return
        attributes = parse_xforward(arg or "")
        if attributes is None:
            await self.push("501 5.5.4 Syntax: XFORWARD attribute=value ...")
            return
        forwarded = getattr(self.session, "xforward", {})
        forwarded.update(attributes)
        self.session.xforward = forwarded  # type: ignore[attr-defined]
        await self.push("250 2.0.0 Ok")

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """The address of a MAIL FROM or RCPT TO argument and the rest after it, as aiosmtpd reads them.

        The same parse as aiosmtpd's (the email package's address grammar,
        ``(None, None)`` if it fails or the local part is over
        ``local_part_limit``), but aiosmtpd's version defines a typing class
        on every call: two class creations per message, a tenth of the
        filter's time on the event loop (profile). A test compares both on
        a corpus of arguments.
        """
        if not arg:
            return "", ""
        parser = email._header_value_parser
        token: Any
        try:
            if arg.lstrip().startswith("<"):
                token, rest = parser.get_angle_addr(arg)
            else:
                token, rest = parser.get_addr_spec(arg)
        except email.errors.HeaderParseError:
            return None, None
        address: str = token.addr_spec
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, rest


    @syntax("DATA")
    async def smtp_DATA(self, arg: str | None) -> None:
        """aiosmtpd's DATA, reading the message in the chunks that arrive instead of line by line.

        aiosmtpd awaits ``readuntil(b"\\r\\n")`` once per line of the
        message: ~190 awaits for an 11 KB OpenPGP message, about half of the
        filter's CPU time per message (profile). This reads whatever has
        arrived, finds the end-of-data line ``.`` with ``bytes.find``, gives
        any bytes after it (pipelined commands) back to the reader, and then
        applies aiosmtpd's own rules to the whole: a line longer than
        ``line_length_limit`` (CRLF included) refuses with 500, more than
        ``data_size_limit`` bytes with 552 (whichever comes first in the
        message, as aiosmtpd decides it line by line), both only after the
        end of data; dot-stuffing is undone; then the DATA hook runs.
        """
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None and self._reader is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            body, refusal = await self._read_data()
        except asyncio.CancelledError:
            log.info("connection lost during DATA")
            self._writer.close()
            raise
        if refusal is not None:
            count = getattr(self.event_handler, "count_reply", None)  # FilterHandler counts refusals
            if count is not None:
                count(refusal)
            await self.push(refusal)
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        # RFC 5321 4.5.2: a line starting with a dot had one added by the client.
        original_content = (b"\r\n" + body).replace(b"\r\n.", b"\r\n")[2:]
        self.envelope.content = original_content
        if self._decode_data:
            self.envelope.content = original_content.decode("utf-8", errors="surrogateescape")
        self.envelope.original_content = original_content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    async def _read_data(self) -> tuple[bytes, str | None]:
        """The message up to the end-of-data line, and the refusal if a limit was broken.

        Holds at most ``data_size_limit`` plus a few KB: past the point
        where the verdict is known, only the bytes needed to see the end of
        data are kept.
        """
        assert self._reader is not None
        limit = self.data_size_limit or 0
        keep = limit + 2 * self.line_length_limit + 4 if limit else 0
        # A virtual CRLF in front, so that a first line "." ends the data too.
        buffer = bytearray(b"\r\n")
        dropped = 0  # bytes thrown away after the verdict was known
        refusal: str | None = None
        scan_from = 0
        while True:
            end = buffer.find(b"\r\n.\r\n", scan_from)
            if end >= 0:
                break
            scan_from = max(0, len(buffer) - 4)
            if keep and refusal is None and len(buffer) > keep:
                refusal = await judge_data_limits(bytes(buffer[2:]), limit, self.line_length_limit)
                if refusal is None:  # cannot happen: more than the limit is here
                    refusal = "552 Error: Too much mail data"
            if refusal is not None and len(buffer) > 8:
                dropped += len(buffer) - 4
                del buffer[:-4]
                scan_from = 0
            chunk = await self._reader.read(READ_ALL)
            if not chunk:  # the peer closed; aiosmtpd cancels this task on EOF anyway
                raise asyncio.CancelledError
            buffer += chunk
        rest = bytes(buffer[end + 5 :])
        if rest:
            # Pipelined commands after the data: back to the reader, in front of nothing,
            # since read() took everything it held.
            self._reader.feed_data(rest)
        body = bytes(buffer[2 : end + 2]) if dropped == 0 else b""
        if refusal is None:
            refusal = await judge_data_limits(body, limit, self.line_length_limit)
        return body, refusal


READ_ALL = 1 << 30
"""StreamReader.read(n) takes min(n, what it holds): with this n, everything it holds."""

_LONG_RUNS: dict[tuple[int, bool], re.Pattern[bytes]] = {}
WINDOW_BYTES = 256 * 1024
"""Long inputs are searched in windows, so that no single C call holds the GIL for long."""
INLINE_CHECK_BYTES = 1024 * 1024
"""Messages up to this size are checked on the event loop (well under a millisecond)."""


def _long_run(length: int, bare: bool) -> re.Pattern[bytes]:
    """A run of ``length`` line bytes; with ``bare``, lone CR and LF count as line bytes."""
    pattern = _LONG_RUNS.get((length, bare))
    if pattern is None:
        byte = rb"(?:[^\r\n]|\r(?!\n)|(?<!\r)\n)" if bare else rb"[^\r\n]"
        pattern = _LONG_RUNS[(length, bare)] = re.compile(byte + b"{%d}" % length)
    return pattern


def _first_long_line(body: bytes, longest: int) -> int:
    """Start of the first line with more than ``longest`` bytes before its CRLF, or -1."""
    crlf = body.count(b"\r\n")
    bare = body.count(b"\n") != crlf or body.count(b"\r") != crlf
    if not bare and len(body) <= INLINE_CHECK_BYTES:
        if max(map(len, body.split(b"\r\n"))) <= longest:
            return -1
    run = _long_run(longest + 1, bare)
    for start in range(0, len(body), WINDOW_BYTES):
        # The search reaches one run (and one byte of look-ahead) past the window, so a
        # run starting in the window is seen whole; a match starting past the window
        # may lack its look-ahead, and is left to the next window.
        match = run.search(body, start, start + WINDOW_BYTES + longest + 2)
        if match is not None and match.start() < start + WINDOW_BYTES:
            return body.rfind(b"\r\n", 0, match.start()) + 2
    return -1


def data_limit_refusal(body: bytes, limit: int, line_length_limit: int) -> str | None:
    """aiosmtpd's verdict on a message's lines and size: 500, 552 or None.

    aiosmtpd reads line by line (a line ends with CRLF; a bare CR or LF is
    part of the line): a line longer than ``line_length_limit`` with its
    CRLF is refused with 500, and once the lines read exceed ``limit``
    bytes with 552, whichever happens first. Found with searches in C over
    windows of the message, never a Python step per line: a hostile
    message may have millions.
    """
    long_start = _first_long_line(body, line_length_limit - 2)
    over_start = -1
    if limit and len(body) > limit:
        # The line holding byte number `limit` is the one that takes the count past it.
        over_start = body.rfind(b"\r\n", 0, limit) + 2
    if long_start >= 0 and (over_start < 0 or long_start <= over_start):
        return "500 Line too long (see RFC5321 4.5.3.1.6)"
    if over_start >= 0:
        return "552 Error: Too much mail data"
    return None


async def judge_data_limits(body: bytes, limit: int, line_length_limit: int) -> str | None:
    """:func:`data_limit_refusal`, in a worker thread for large messages (it is CPU work)."""
    if len(body) <= INLINE_CHECK_BYTES:
        return data_limit_refusal(body, limit, line_length_limit)
    return await asyncio.to_thread(data_limit_refusal, body, limit, line_length_limit)


def parse_xforward(arg: str) -> dict[str, str] | None:
    """``NAME=x ADDR=y`` as a dict with xtext decoded; None if malformed or unknown.

    ``[UNAVAILABLE]`` and ``[TEMPUNAVAIL]`` mean "not known" and are kept
    as such (no address parses from them).
    """
    attributes: dict[str, str] = {}
    for item in arg.split():
        name, sep, value = item.partition("=")
        name = name.upper()
        if not sep or name not in XFORWARD_ATTRIBUTES or len(value) > 255:
            return None
        attributes[name] = _XTEXT_HEX.sub(lambda m: chr(int(m.group(1), 16)), value)
    return attributes or None


def session_client_address(session: Session) -> str | None:
    """The client address Postfix forwarded for this session, or None if it sent none."""
    return getattr(session, "xforward", {}).get("ADDR")


def mailbox_of_recipient(rcpt: str, delimiters: str = RECIPIENT_DELIMITER) -> str:
    """The account a recipient is delivered to: the address extension cut off, as Postfix does.

    Postfix splits the local part at the first delimiter character, except
    for postmaster, mailer-daemon and double-bounce, and never where the
    result would be empty (``+x@`` stays as it is).
    """
    local, at, domain = rcpt.rpartition("@")
    if not at or not delimiters:
        return rcpt.lower()
    if local.lower() in ("postmaster", "mailer-daemon", "double-bounce"):
        return rcpt.lower()
    cut = next((i for i, char in enumerate(local) if char in delimiters), -1)
    if cut > 0:
        local = local[:cut]
    return f"{local}@{domain}".lower()


class ReinjectPool:
    """Idle SMTP connections to Postfix's reinjection listener, reused for the next message.

    A fresh connection per message costs a TCP handshake, EHLO and QUIT on
    top of the transaction: half of the filter's round trips to Postfix, and
    the largest share of its time on the event loop (the profile). Postfix's
    smtpd takes any number of transactions on one connection. A connection
    goes back only after a transaction that ended well, and is not reused
    after MAX_IDLE_SECONDS (far below Postfix's smtpd_timeout of 300 s), so
    an idle relay holds no stale connections; if Postfix restarts meanwhile,
    the failed message is deferred with 451 as before and retried.
    """

    MAX_IDLE = 8
    MAX_IDLE_SECONDS = 5.0

    def __init__(self, host: str, port: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.host = host
        self.port = port
        self.clock = clock
        self._idle: list[tuple[float, ReinjectClient]] = []
        self._reaper: asyncio.TimerHandle | None = None

    async def acquire(self) -> ReinjectClient:
        """An idle connection that is still fresh, or a new one."""
        now = self.clock()
        while self._idle:
            since, client = self._idle.pop()
            if now - since <= self.MAX_IDLE_SECONDS and client.is_connected:
                return client
            client.close()
        return await ReinjectClient.connect(self.host, self.port, REINJECT_TIMEOUT_SECONDS)

    def release(self, client: ReinjectClient) -> bool:
        """Keep ``client`` for the next message; False if the pool is full (close it then)."""
        if len(self._idle) >= self.MAX_IDLE or not client.is_connected:
            return False
        self._idle.append((self.clock(), client))
        self._schedule_reap()
        return True

    def _schedule_reap(self) -> None:
        """Close idle connections once they are too old to be reused, even if no other
        message comes: nothing stays open towards Postfix on an idle relay."""
        if self._reaper is None:
            loop = asyncio.get_running_loop()
            self._reaper = loop.call_later(self.MAX_IDLE_SECONDS, self._reap)

    def _reap(self) -> None:
        self._reaper = None
        now = self.clock()
        fresh = []
        for since, client in self._idle:
            if now - since < self.MAX_IDLE_SECONDS and client.is_connected:
                fresh.append((since, client))
            else:
                client.close()
        self._idle = fresh
        if self._idle:
            self._schedule_reap()

    def close(self) -> None:
        """Close every idle connection (at shutdown)."""
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        for _, client in self._idle:
            client.close()
        self._idle = []

    def __len__(self) -> int:
        return len(self._idle)


class FilterHandler:
    """aiosmtpd handler: check each message and reinject the accepted ones.

    ``ratelimiter``, ``dkim`` and ``counters`` can be injected by tests;
    by default the counters go to ``filtermail-<mode>`` in ``metrics_dir``
    (:mod:`chatmaild.metrics`). Incoming mode
    verifies DKIM unless ``CHATMAIL_SKIP_DKIM=1`` is in the environment;
    there is deliberately no configuration key for that, so a relay
    cannot be configured into accepting forged senders.
    """

    def __init__(
        self,
        config: Config,
        mode: str,
        ratelimiter: RateLimiter | None = None,
        dkim: dkimcheck.DkimVerifier | None = None,
        counters: metrics.Counters | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown filtermail mode {mode!r}: expected one of {', '.join(MODES)}")
        self.config = config
        self.mode = mode
        if counters is None:
            counters = metrics.Counters.for_source(config.metrics_dir, f"filtermail-{mode}")
        self.counters = counters
        self.reinject_port = (
            config.postfix_reinject_port if mode == "outgoing" else config.postfix_reinject_port_incoming
        )
        if ratelimiter is None:
            ratelimiter = RateLimiter(config.max_user_send_per_minute, config.max_user_send_burst_size)
        self.ratelimiter = ratelimiter
        self.executor = concurrent.futures.ThreadPoolExecutor(MIME_WORKERS, thread_name_prefix="mimecheck")
        self.reinject_pool = ReinjectPool(REINJECT_HOST, self.reinject_port)
        self._closing: set[asyncio.Task[None]] = set()
        self.dkim: dkimcheck.DkimVerifier | None = None
        if mode == "incoming":
            from . import dkimcheck

            if dkim is None and dkimcheck.should_skip_from_environment():
                log.warning(
                    "DKIM verification DISABLED by %s=1: incoming mail with forged senders "
                    "is accepted. Never set this outside tests.",
                    dkimcheck.SKIP_ENV_VAR,
                )
            else:
                self.dkim = dkim if dkim is not None else dkimcheck.DkimVerifier()

    @property
    def listen_port(self) -> int:
        c = self.config
        return c.filtermail_smtp_port if self.mode == "outgoing" else c.filtermail_smtp_port_incoming

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        """Announce XFORWARD, so that Postfix tells us the real client's address."""
        session.host_name = hostname
        return [*responses[:-1], EHLO_XFORWARD, responses[-1]]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        # The null sender arrives as "<>" and is kept so (aiosmtpd treats an
        # empty mail_from as "no MAIL command yet"); handle_DATA maps it to "".
        if self.mode == "outgoing":
            if address.count("@") != 1:
                return self.count_reply(f"500 Invalid from address <{address}>")
            # Counted at MAIL FROM, before the body is sent, so a flood costs us no DATA.
            until = self.ratelimiter.check(address.lower())
            if until is not None:
                log.info("outgoing: rate limited a sender until %s", format_until(until))
                return self.count_reply(
                    f"450 4.7.1: Too much mail from {address}, rate limited until {format_until(until)}"
                )
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        mail_from = envelope.mail_from or ""
        if mail_from == NULL_SENDER:
            mail_from = ""
        return await self.process(
            mail_from,
            list(envelope.rcpt_tos),
            envelope.original_content or b"",
            session_client_address(session),
        )

    def count_reply(self, reply: str) -> str:
        """Count the final reply to a message (or a refusal at MAIL FROM) and return it.

        250 counts one accepted delivery, a 4xx or 5xx one refusal under its
        code; a MAIL FROM is counted only when it is refused.
        """
        if reply.startswith("250"):
            self.counters.inc("chatmail_deliveries_accepted_total", direction=self.mode)
        else:
            code = metrics.reply_code(reply)
            if code is not None:
                self.counters.inc("chatmail_refusals_total", direction=self.mode, code=code)
        return reply

    async def process(
        self, mail_from: str, rcpt_tos: list[str], data: bytes, client_address: str | None = None
    ) -> str:
        """Check one message and reinject it if accepted; return the SMTP reply line.

        Shared by the SMTP server and the HTTP receiver, so both apply the
        very same rules, and both are counted here. ``mail_from`` is ``""``
        for the null sender; ``client_address`` is the sending client's IP
        address where there is one (XFORWARD), None over HTTPS.
        """
        return self.count_reply(await self._process(mail_from, rcpt_tos, data, client_address))

    async def _process(self, mail_from: str, rcpt_tos: list[str], data: bytes, client_address: str | None) -> str:
        loop = asyncio.get_running_loop()
        verdict, prepared, verified = await loop.run_in_executor(
            self.executor, self.judge_and_prepare, mail_from, rcpt_tos, data
        )
        if not verdict.accept:
            log.info("%s: rejected %s mail from <%s>: %s", self.mode, verdict.kind, mail_from, verdict.reply)
            return verdict.reply
        if self.mode == "incoming" and not verified:
            refusal = await self.check_origin(data, verdict, client_address, prepared)
            if refusal is not None:
                return refusal
        # Accepted mail is not logged with its sender: the relay keeps no record of who writes.
        log.debug("%s: passing %s mail", self.mode, verdict.kind)
        if self.mode == "outgoing":
            data = hide_subject(data)
        return await self.reinject(verdict.reinject_from, rcpt_tos, data)

    def judge_and_prepare(
        self, mail_from: str, rcpt_tos: list[str], data: bytes
    ) -> tuple[mimecheck.Verdict, dkimcheck.Prepared | None, bool]:
        """:meth:`judge`, and for accepted incoming mail the DKIM work too (all in the executor).

        Returns the verdict, the DKIM parse, and whether the message's
        signature already verified with a cached key. Parsing and, where
        the key is cached (nearly always: senders write again), verifying
        here, in the thread that already holds the message, saves up to two
        more trips through a thread per message. Only accepted mail is
        parsed, so cleartext still costs no DKIM work; a parse that fails,
        or a signature not verified here, is left to
        :meth:`DkimVerifier.check`, which looks keys up and decides.
        """
        verdict = self.judge(mail_from, rcpt_tos, data)
        prepared = None
        verified = False
        if verdict.accept and self.dkim is not None and not verdict.from_addr.rpartition("@")[2].startswith("["):
            try:
                prepared = self.dkim.prepare(data)
            except Exception:
                return verdict, None, False
            try:
                verified = self.dkim.verify_cached(prepared, verdict.from_addr)
            except Exception:
                log.debug("DKIM: verification with cached keys failed", exc_info=True)
        return verdict, prepared, verified

    def judge(self, mail_from: str, rcpt_tos: list[str], data: bytes) -> mimecheck.Verdict:
        """Parse and judge one message (blocking CPU work: runs in the executor)."""
        if self.mode == "outgoing":
            c = self.config
            return mimecheck.check_outgoing(
                mail_from, rcpt_tos, data, c.passthrough_senders, c.passthrough_recipients
            )
        return mimecheck.check_incoming(mail_from, rcpt_tos, data, self.accepts_cleartext)

    async def check_origin(
        self,
        data: bytes,
        verdict: mimecheck.Verdict,
        client_address: str | None = None,
        prepared: dkimcheck.Prepared | None = None,
    ) -> str | None:
        """Verify that incoming mail comes from the domain in ``From:``; the refusal, or None.

        Runs after the encryption check, so cleartext is refused without
        spending DNS lookups and RSA work on it. An IP-literal domain is
        checked against ``client_address`` even when DKIM checks are off.
        """
        from . import dkimcheck

        domain = verdict.from_addr.rpartition("@")[2]
        if domain.startswith("["):
            refusal = dkimcheck.check_ip_literal(domain, client_address)
            if refusal is not None:
                log.info("incoming: refused %s mail: %s", verdict.kind, refusal)
            return refusal
        if self.dkim is None:
            return None
        refusal = await self.dkim.check(data, verdict.from_addr, client_address, prepared)
        if refusal is not None:
            log.info("incoming: refused %s mail: %s", verdict.kind, refusal)
        return refusal

    def accepts_cleartext(self, rcpt: str) -> bool:
        """A recipient takes cleartext only if its account exists without the enforceE2EEincoming marker.

        The account is the one Postfix delivers to (``bob+x@`` goes to
        ``bob@``); an address with no account is treated as enforcing, so no
        spelling of a strict user's address lets cleartext in.
        """
        try:
            user = self.config.get_user(mailbox_of_recipient(rcpt))
        except ValueError:
            return False
        return user.exists() and user.is_incoming_cleartext_ok()

    async def reinject(self, mail_from: str, rcpt_tos: list[str], data: bytes) -> str:
        """Hand the message back to Postfix; return the reply for our client.

        The reply is returned the moment Postfix has queued the message: a
        connection whose transaction went well goes back to the pool (no QUIT
        at all), any other ends with a QUIT in the background. Anything slow
        between "queued" and our client's 250 is a window in which a killed
        filter makes the client resend a message that is already on its way.
        """
        client: ReinjectClient | None = None
        try:
            client = await self.reinject_pool.acquire()
            refused = await client.sendmail(mail_from, rcpt_tos, data)
        except Refused as exc:  # RecipientsRefused too: the first recipient's refusal
            if client is not None:  # None: Postfix refused the session itself (EHLO)
                self.close_later(client)
            return passed_back(exc.code, exc.message)
        except OSError as exc:
            if client is not None:
                client.close()
            log.warning("reinjection to %s:%s failed: %s", REINJECT_HOST, self.reinject_port, exc)
            return "451 4.3.0 Local error: could not pass the message on, try again later"
        except BaseException:
            # An address that cannot be written on a command line (handle_exception defers it).
            if client is not None:
                client.close()
            raise
        # Only a connection whose transaction ended well goes back to the pool.
        if not self.reinject_pool.release(client):
            self.close_later(client)
        if refused:
            log.warning("reinjection: %d of %d recipients refused", len(refused), len(rcpt_tos))
        return "250 OK"

    def close_later(self, client: ReinjectClient) -> None:
        """End a reinjection session with QUIT without making anyone wait for it."""
        task = asyncio.get_running_loop().create_task(self._quit(client))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _quit(client: ReinjectClient) -> None:
        try:
            await asyncio.wait_for(client.quit(), QUIT_TIMEOUT_SECONDS)
        except (Refused, OSError):
            pass
        finally:
            client.close()

    async def close_reinjections(self) -> None:
        """Close the pooled connections and wait for the background QUITs (at shutdown
        and in tests)."""
        self.reinject_pool.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def handle_exception(self, error: Exception) -> str:
        # A bug here must defer mail (the sender retries), never bounce it.
        log.exception("%s: internal error", self.mode, exc_info=error)
        return self.count_reply("451 4.3.0 Internal error in the mail filter, try again later")


POSTFIX_PROXY_FAILURE_TEXT = "queue file write error"
REPLY_REINJECT_QUEUE_ERROR = "451 4.3.0 Error: the relay could not queue the message, try again later"


def passed_back(code: int, message: str) -> str:
    """The reinjection listener's refusal as our client should see it.

    Postfix's front smtpd answers "queue file write error" when it cannot
    reach this filter, and the relay's reject footer explains that text
    (config/postfix.nix). The same words from the reinjection listener mean
    something else, so they are reworded and never get that footer.
    """
    if POSTFIX_PROXY_FAILURE_TEXT in message:
        return REPLY_REINJECT_QUEUE_ERROR
    return f"{code} {message}"


def make_smtp_factory(handler: FilterHandler) -> Any:
    """Return the protocol factory for ``loop.create_server``."""
    limit = handler.config.max_message_size

    def factory() -> SMTP:
        return ParameterTolerantSMTP(
            handler, data_size_limit=limit, enable_SMTPUTF8=True, hostname="filtermail"
        )

    return factory


async def serve(config: Config, mode: str) -> None:
    """Listen on the loopback port(s) of ``mode`` and serve until cancelled.

    Incoming mode also runs the HTTP receiver for relays that deliver over
    HTTPS (nginx terminates TLS), on the same event loop and handler.
    """
    handler = FilterHandler(config, mode)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(make_smtp_factory(handler), LISTEN_HOST, handler.listen_port)
    log.info("filtermail %s listening on %s:%s", mode, LISTEN_HOST, handler.listen_port)
    http = None
    if mode == "incoming":
        http = HttpReceiverOnDemand(handler, LISTEN_HOST, config.filtermail_http_port_incoming)
        log.info(
            "filtermail incoming HTTP receiver on %s:%s", LISTEN_HOST, config.filtermail_http_port_incoming
        )
    try:
        async with server:
            await server.serve_forever()
    finally:
        if http is not None:
            await http.close()
        await handler.close_reinjections()
        handler.counters.close()


class HttpReceiverOnDemand:
    """The HTTP receiver (:mod:`chatmaild.mxdeliv`), loaded with its first connection.

    aiohttp costs the incoming filter a third of its memory (11 MB), and a
    relay that no other relay delivers to over HTTPS never needs it. The port
    is bound at once, so a connection is never refused: the first one waits
    in the backlog while the receiver starts (tens of milliseconds) and is
    then served like every later one.
    """

    def __init__(self, handler: FilterHandler, host: str, port: int) -> None:
        self.handler = handler
        self.host, self.port = host, port
        self.sock = socket.create_server((host, port), backlog=HTTP_BACKLOG)
        self.sock.setblocking(False)
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.sock.fileno(), self._first_connection)
        self.starting: asyncio.Task[Any] | None = None

    def _first_connection(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.starting = self.loop.create_task(self._start())

    async def _start(self) -> Any:
        log.debug("first HTTP delivery: starting the receiver")
        try:
            from . import mxdeliv

            return await mxdeliv.start(self.handler, self.host, self.port, sock=self.sock)
        except Exception:
            # Refused connections make the sending relays retry later; a port nobody
            # accepts on would leave them hanging.
            log.exception("the HTTP receiver cannot start; deliveries over HTTPS are refused")
            self.sock.close()
            return None

    async def close(self) -> None:
        """Stop listening (and stop the receiver, if it was started)."""
        if self.starting is None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            return
        runner = await self.starting
        if runner is not None:
            await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``filtermail`` command."""
    parser = argparse.ArgumentParser(
        prog="filtermail",
        description="Postfix before-queue SMTP filter of a chatmail relay: passes on "
        "OpenPGP-encrypted mail and refuses cleartext with 523.",
    )
    parser.add_argument("config", metavar="CONFIG", help="path of chatmail.ini")
    parser.add_argument(
        "mode",
        choices=MODES,
        help="outgoing: behind submission, listens on filtermail_smtp_port; "
        "incoming: behind port 25, listens on filtermail_smtp_port_incoming",
    )
    add_verbose_flag(parser)
    args, config = parse_args_and_config(parser, argv)
    return run_daemon(f"filtermail {args.mode}", serve(config, args.mode))


if __name__ == "__main__":
    raise SystemExit(main())
