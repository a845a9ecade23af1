"""Base class for services that Dovecot reaches as a ``proxy:`` dict.

Dovecot talks to a dict server over a unix socket with a line protocol: one
request per LF-terminated line, the first byte names the command, the fields
are separated by TAB and "tab-escaped" (``\\x01`` followed by ``1``, ``t``,
``n``, ``r`` or ``0`` stands for ``\\x01``, TAB, LF, CR and NUL). We answer
only what our services need:

* ``H...`` hello: ignored, no reply.
* ``L<key>\\t<user>`` lookup: ``O<value>`` or ``N`` (``F`` if the handler fails).
* ``I<flags>\\t<max_rows>\\t<path>\\t<user>`` iterate: zero or more
  ``O<key>\\t<value>`` lines, then an empty line (without it Dovecot waits
  until its timeout).
* ``B<tid>\\t<user>[\\t...]`` begin, ``S<tid>\\t<key>\\t<value>`` set,
  ``C<tid>`` commit (reply ``O`` or ``F``), ``R<tid>`` rollback (no reply).
* anything else (unset, atomic increment, timestamps, ...): no reply.

Transactions are kept per connection because Dovecot numbers them per
connection: two imap processes both use transaction ``1`` at the same time.
Dovecot 2.4 sends more fields than 2.3 (``B`` carries an expiry, hello has a
new version), so extra fields are ignored rather than treated as errors, and
a line we do not understand is logged and skipped: one odd request must not
take the service down for every other mailbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import stat
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from .activation import drain, inherited_socket, wait_until_idle

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 64 * 1024
"""Dovecot's own limit for a dict protocol line; anything longer is not from Dovecot."""
SOCKET_MODE = 0o660
LISTEN_BACKLOG = 1024
"""Connections the kernel queues before we accept them (asyncio's default is 100).

Every Dovecot process that delivers or logs in connects at once after a
restart or during a burst; beyond the backlog the kernel refuses them."""

_UNESCAPES = {"1": "\x01", "t": "\t", "n": "\n", "r": "\r", "0": "\0"}
_ESCAPES = {"\x01": "\x011", "\t": "\x01t", "\n": "\x01n", "\r": "\x01r", "\0": "\x010"}


def tab_unescape(text: str) -> str:
    """Undo Dovecot's tab-escaping of one field (an unknown escape keeps the character)."""
    if "\x01" not in text:
        return text
    out: list[str] = []
    chars = iter(text)
    for char in chars:
        if char == "\x01":
            nxt = next(chars, "")
            out.append(_UNESCAPES.get(nxt, nxt))
        else:
            out.append(char)
    return "".join(out)


def tab_escape(text: str) -> str:
    """Escape one field the way Dovecot's dict client expects to unescape it."""
    return "".join(_ESCAPES.get(char, char) for char in text)


def split_fields(text: str) -> list[str]:
    """Split the arguments of one request on TAB and unescape each field."""
    return [tab_unescape(field) for field in text.split("\t")]


@dataclasses.dataclass
class Transaction:
    """One open ``B``...``C`` transaction of a connection."""

    user: str
    ok: bool = True
    error: str = ""
    """Why the commit fails, sent to Dovecot, which logs it ("dict-server returned failure: ...")."""


class SetRefused(Exception):
    """Raised by :meth:`DictProxy.handle_set` to fail the commit with a reason for Dovecot's log."""


class DictProxy:
    """A Dovecot dict server; subclasses override :meth:`handle_lookup` and :meth:`handle_set`.

    The hooks are coroutines and each request is answered before the next
    line of the same connection is read, so whatever a hook has done (a file
    written, a notification queued) is done before Dovecot sees the commit
    succeed.
    """

    open_connections = 0
    """Connections being served now (class defaults; each instance counts its own)."""
    connections_served = 0
    """Connections accepted since the start, open or closed."""
    socket_activated = False
    """True once :meth:`start` serves a socket systemd passed."""

    def busy(self) -> bool:
        """True while a connection is open; subclasses add work of their own (pending pushes)."""
        return self.open_connections > 0

    async def handle_lookup(self, key: str, user: str) -> str | None:
        """Return the value stored under ``key`` for ``user``, or None for "not found"."""
        log.debug("lookup of unsupported key %s", key)
        return None

    async def handle_iterate(self, path: str, user: str) -> Iterable[tuple[str, str]]:
        """Return the ``(key, value)`` pairs under ``path``; none by default."""
        return ()

    async def handle_set(self, user: str, key: str, value: str) -> bool:
        """Store ``value`` under ``key`` for ``user``; False makes the commit fail."""
        log.debug("set of unsupported key %s", key)
        return False

    # --- protocol ------------------------------------------------------------

    async def handle_line(self, line: str, transactions: dict[str, Transaction]) -> str:
        """Answer one request line (without its LF); return the reply text, maybe empty."""
        if not line:
            return ""
        cmd, args = line[0], line[1:]
        if cmd == "H":
            return ""
        if cmd == "L":
            fields = split_fields(args)
            key, user = fields[0], fields[1] if len(fields) > 1 else ""
            try:
                value = await self.handle_lookup(key, user)
            except Exception:
                log.exception("lookup of %s failed", key)
                return "F\n"
            return "N\n" if value is None else f"O{tab_escape(value)}\n"
        if cmd == "I":
            fields = split_fields(args)
            path = fields[2] if len(fields) > 2 else ""
            user = fields[3] if len(fields) > 3 else ""
            try:
                rows = list(await self.handle_iterate(path, user))
            except Exception:
                log.exception("iteration of %s failed", path)
                return "F\n"
            return "".join(f"O{tab_escape(k)}\t{tab_escape(v)}\n" for k, v in rows) + "\n"
        if cmd == "B":
            fields = split_fields(args)
            tid = fields[0]
            if tid in transactions:
                log.warning("transaction %s begun twice on one connection; starting it over", tid)
            transactions[tid] = Transaction(user=fields[1] if len(fields) > 1 else "")
            return ""
        if cmd == "S":
            fields = split_fields(args)
            if len(fields) < 2:
                log.warning("set request without a key ignored")
                return ""
            tid, key = fields[0], fields[1]
            value = fields[2] if len(fields) > 2 else ""
            transaction = transactions.get(tid)
            if transaction is None:
                log.warning("set of %s in unknown transaction %s ignored", key, tid)
                return ""
            try:
                accepted = await self.handle_set(transaction.user, key, value)
            except SetRefused as exc:
                accepted = False
                transaction.error = transaction.error or str(exc)
            except Exception:
                log.exception("set of %s failed", key)
                accepted = False
            if not accepted:
                transaction.ok = False
            return ""
        if cmd == "C":
            tid = split_fields(args)[0]
            transaction = transactions.pop(tid, None)
            if transaction is None:
                log.warning("commit of unknown transaction %s answered with failure", tid)
                return "F\n"
            if transaction.ok:
                return "O\n"
            # Dovecot reads the failure reason from the field after the first TAB.
            return f"F\t{tab_escape(transaction.error)}\n" if transaction.error else "F\n"
        if cmd == "R":
            transactions.pop(split_fields(args)[0], None)
            return ""
        log.debug("dict request %r not handled, no reply", cmd)
        return ""

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer requests of one Dovecot connection until it closes."""
        transactions: dict[str, Transaction] = {}
        self.open_connections += 1
        self.connections_served += 1
        try:
            while True:
                try:
                    raw = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as exc:
                    raw = exc.partial  # last line without LF, then end of stream
                    if not raw:
                        break
                except asyncio.LimitOverrunError:
                    log.warning("request line longer than %s bytes, closing the connection", MAX_LINE_BYTES)
                    break
                if len(raw) > MAX_LINE_BYTES + 1:
                    log.warning("request line longer than %s bytes, closing the connection", MAX_LINE_BYTES)
                    break
                line = raw.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
                reply = await self.handle_line(line, transactions)
                if reply:
                    writer.write(reply.encode("utf-8", "surrogateescape"))
                    await writer.drain()
                if not raw.endswith(b"\n"):
                    break
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("dict connection failed")
        finally:
            self.open_connections -= 1
            if transactions:
                log.debug("connection closed with %s open transaction(s)", len(transactions))
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def start(self, socket_path: str | Path) -> asyncio.AbstractServer:
        """Listen on ``socket_path`` (mode 0660), replacing a socket left by an earlier run.

        When systemd passes the listening socket (socket activation), that
        socket is served instead: it stays open while this process restarts,
        so Dovecot's connections wait in its backlog rather than being
        refused, and no delivery loses its push notification.
        """
        inherited = inherited_socket(socket_path)
        self.socket_activated = inherited is not None
        if inherited is not None:
            log.info("serving the socket systemd passed for %s", socket_path)
            # The socket file is systemd's: since Python 3.13 closing the server would unlink
            # it, and every later connection (Dovecot's) would find no file until the socket
            # unit is restarted.
            if sys.version_info >= (3, 13):
                return await asyncio.start_unix_server(
                    self.serve_connection, sock=inherited, limit=MAX_LINE_BYTES + 1, cleanup_socket=False
                )
            return await asyncio.start_unix_server(self.serve_connection, sock=inherited, limit=MAX_LINE_BYTES + 1)
        path = Path(socket_path)
        remove_stale_socket(path)
        with _umask(0o777 & ~SOCKET_MODE):
            server = await asyncio.start_unix_server(
                self.serve_connection, path=str(path), limit=MAX_LINE_BYTES + 1, backlog=LISTEN_BACKLOG
            )
        os.chmod(path, SOCKET_MODE)
        return server

    async def serve_forever(self, socket_path: str | Path, exit_when_idle: float | None = None) -> None:
        """Listen on ``socket_path`` and serve until cancelled.

        With ``exit_when_idle`` and a socket passed by systemd, return
        instead once no connection has been open and nothing pending (see
        :meth:`busy`) for that many seconds, after serving every connection
        accepted so far (see :mod:`chatmaild.activation`).
        """
        server = await self.start(socket_path)
        log.info("dict service listening on %s", socket_path)
        if exit_when_idle is not None and not self.socket_activated:
            log.warning("--exit-when-idle ignored: the socket is our own, nobody would start us again")
            exit_when_idle = None
        async with server:
            if exit_when_idle is None:
                await server.serve_forever()
                return
            await wait_until_idle(exit_when_idle, self.busy, lambda: self.connections_served)
            server.close()
            await drain(self.busy)
            log.info("idle for %s s, leaving the socket to systemd", exit_when_idle)


def remove_stale_socket(path: Path) -> None:
    """Delete ``path`` if it is a socket; refuse to delete anything else."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path}: exists and is not a socket; not replacing it")
    path.unlink()


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    """Create the socket with the right mode from the start (no window with a wider one)."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)
