"""HTTP receiver for relay-to-relay delivery (``POST /mxdeliv``).

Chatmail relays can deliver to each other over HTTPS instead of SMTP on
port 25, which is blocked on many networks and costs several round trips
per message. nginx terminates TLS and forwards the request here, to the
incoming filter's HTTP port on loopback.

A request is one SMTP transaction in another dress: ``X-MAIL-FROM`` is
the envelope sender (absent or empty for the null sender), each
``X-MAIL-TO`` header one recipient, and the body the raw message. It runs
through exactly the same :meth:`FilterHandler.process` as mail arriving
over SMTP, so there is no second set of rules to keep in step. The
response body is the SMTP reply line, so the sending relay can hand it on
to its Postfix unchanged: 200 for ``250 OK``, 400 for any refusal.

There is no client authentication, as there is none on port 25: trust
rests on the DKIM and encryption checks.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING

from aiohttp import http_exceptions, web

if TYPE_CHECKING:
    from .filtermail import FilterHandler

log = logging.getLogger(__name__)

HANDLER_KEY: web.AppKey[FilterHandler] = web.AppKey("filter_handler")
READ_TIMEOUT_SECONDS = 60.0
REPLY_TOO_BIG = "552 Message exceeds maximum size"
REPLY_NO_RECIPIENT = "554 5.5.1 No X-MAIL-TO recipient given"
REPLY_READ_TIMEOUT = "451 4.4.2 Timeout while reading the message"
REPLY_ABORTED = "451 4.4.2 Connection lost while reading the message"
READ_CHUNK = 64 * 1024


def _text(status: int, line: str) -> web.Response:
    return web.Response(status=status, text=line + "\r\n")


async def _read_body(request: web.Request, limit: int) -> bytes | None:
    """The request body, or None once it grows past ``limit`` (without reading the rest)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks = []
    size = 0
    async for chunk in request.content.iter_chunked(READ_CHUNK):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def deliver(request: web.Request) -> web.Response:
    """Handle one delivery: any path, POST only (other methods get 405 from the route)."""
    handler = request.app[HANDLER_KEY]
    mail_from = request.headers.get("X-MAIL-FROM", "").strip()
    if mail_from == "<>":
        mail_from = ""
    rcpt_tos = [rcpt.strip() for rcpt in request.headers.getall("X-MAIL-TO", []) if rcpt.strip()]
    try:
        async with asyncio.timeout(READ_TIMEOUT_SECONDS):
            data = await _read_body(request, handler.config.max_message_size)
    except TimeoutError:
        return _text(408, handler.count_reply(REPLY_READ_TIMEOUT))
    except (ConnectionError, http_exceptions.HttpProcessingError):
        # A sender that hangs up mid-upload is routine (its relay retries);
        # one line, not a traceback per attempt, keeps the log readable.
        log.info("delivery aborted by the client before the end of the message")
        response = _text(400, handler.count_reply(REPLY_ABORTED))
        response.force_close()
        return response
    if data is None:
        # The connection cannot be reused: the rest of the body was never read.
        response = _text(413, handler.count_reply(REPLY_TOO_BIG))
        response.force_close()
        return response
    if not rcpt_tos:
        return _text(400, handler.count_reply(REPLY_NO_RECIPIENT))
    try:
        # No client address: an IP-literal sender cannot be verified over HTTPS.
        reply = await handler.process(mail_from, rcpt_tos, data, client_address=None)
    except Exception as exc:
        reply = await handler.handle_exception(exc)
    return _text(200 if reply.startswith("250") else 400, reply)


def make_app(handler: FilterHandler) -> web.Application:
    """The aiohttp application around ``handler`` (also used directly by tests)."""
    # The body is read by deliver() itself, with the relay's own size limit.
    app = web.Application(client_max_size=handler.config.max_message_size + 1)
    app[HANDLER_KEY] = handler
    app.router.add_route("POST", "/{tail:.*}", deliver)
    return app


async def start(
    handler: FilterHandler, host: str, port: int, sock: socket.socket | None = None
) -> web.AppRunner:
    """Listen on ``host:port`` (or serve the listening ``sock``) on the running loop; the
    caller cleans the runner up."""
    runner = web.AppRunner(make_app(handler), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.SockSite(runner, sock) if sock is not None else web.TCPSite(runner, host, port)
    await site.start()
    return runner
