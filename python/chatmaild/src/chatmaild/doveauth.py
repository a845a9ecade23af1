"""doveauth: accounts for Dovecot, created on first login.

A chatmail relay has no sign-up: logging in with a new address and password
creates the account. Dovecot 2.4 no longer has the dict passdb that upstream
relays use for this, so Dovecot's Lua passdb/userdb asks this service over
HTTP/1.1 on the loopback interface instead:

* ``POST /passdb`` with body ``<user>\\n<cleartext password>`` answers 200 and
  the stored ``{SHA512-CRYPT}`` hash (Dovecot compares the password itself),
  creating the account first if it does not exist and the rules allow it;
  404 otherwise.
* ``POST /userdb`` with body ``<user>`` answers 200 if the account exists,
  else 404.

Any local process can reach a loopback port, and a passdb answer amounts to
"this password is valid", so every request must carry the header
``X-Chatmail-Token`` with the secret written at start-up to a file only the
service user can read. The HTTP parser is deliberately tiny and strict: the
only client is our own Lua script, and anything unexpected is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hmac
import logging
import os
import re
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from . import metrics
from .blocklist import Blocklist
from .cli import parse_args_and_config, parse_listen, run_daemon
from .config import Config
from .logsetup import add_verbose_flag
from .sha512crypt import hash_password
from .syslimits import has_sufficient_resources

log = logging.getLogger(__name__)

TOKEN_HEADER = "x-chatmail-token"
MAX_HEADER_BYTES = 8 * 1024
MAX_BODY_BYTES = 4 * 1024
IDLE_TIMEOUT_SECONDS = 60.0
HASH_SCHEME_PREFIX = "{SHA512-CRYPT}"
LOCALPART_PATTERN = re.compile(r"^[a-z0-9._-]+$")
CONTENT_LENGTH_PATTERN = re.compile(r"[0-9]{1,9}")

REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    500: "Internal Server Error",
}


# --- account rules and storage -------------------------------------------


@dataclasses.dataclass(frozen=True)
class Decision:
    """Whether an account may be created, and if not, why (for the log)."""

    allowed: bool
    reason: str = ""


ALLOWED = Decision(True)


def check_creation_allowed(config: Config, addr: str, password: str) -> Decision:
    """Apply the relay's rules for new accounts (pure: no I/O but the nocreate file).

    The domain is checked by the caller: this only judges the shape of the
    address and the password.
    """
    if config.nocreate_file.exists():
        return Decision(False, f"account creation blocked by {config.nocreate_file}")
    if len(password) < config.password_min_length:
        return Decision(False, f"password shorter than {config.password_min_length} characters")
    parts = addr.split("@")
    if len(parts) != 2:
        return Decision(False, "address must contain exactly one '@'")
    localpart = parts[0]
    if not config.username_min_length <= len(localpart) <= config.username_max_length:
        return Decision(
            False,
            f"local part length {len(localpart)} outside "
            f"{config.username_min_length}..{config.username_max_length}",
        )
    if not LOCALPART_PATTERN.match(localpart):
        return Decision(False, "local part may only contain a-z 0-9 . _ -")
    return ALLOWED


def sufficient_resources(config: Config) -> Decision:
    """Resource gate for new accounts: load, available memory and free disk (spec §6.6).

    Existing accounts never pass through it, so a busy or full relay keeps serving its
    users while it stops taking new ones.
    """
    verdict = has_sufficient_resources(config)
    return Decision(verdict.ok, verdict.reason)


def creation_threads() -> int:
    """Worker threads for account creation: the CPUs this process may use, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


class AccountStore:
    """Looks up and creates accounts under ``mailboxes_dir``.

    Concurrent first logins of one address: an asyncio lock keeps them in
    this process from hashing the same password twice, and the account file
    appears atomically or not at all (:meth:`User.create`), which settles any
    race with another process without a lock. A password is never
    overwritten by a racing first login.
    """

    def __init__(
        self,
        config: Config,
        resource_gate: Callable[[Config], Decision] = sufficient_resources,
        counters: metrics.Counters | None = None,
    ) -> None:
        self.config = config
        self.resource_gate = resource_gate
        # Accounts created, for `chatmail metrics` (chatmaild.metrics).
        self.counters = counters or metrics.Counters.for_source(config.metrics_dir, "doveauth")
        self.blocklist = Blocklist(config.blocklist_file)
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        # Hashing runs in C without the GIL, so one thread per CPU computes that many
        # hashes at once; more threads would only queue for the GIL and the CPUs.
        self._creators = concurrent.futures.ThreadPoolExecutor(
            max_workers=creation_threads(), thread_name_prefix="create"
        )

    def is_local(self, addr: str) -> bool:
        """Only addresses of this relay's domain are served."""
        return addr.endswith("@" + self.config.mail_domain)

    def lookup(self, addr: str) -> str | None:
        """Return the stored hash of ``addr`` or None if the account does not exist."""
        try:
            user = self.config.get_user(addr)
        except ValueError:
            return None
        return user.get_password_hash()

    def is_blocked(self, addr: str) -> bool | None:
        """Whether ``addr`` is on the blocklist; None if the list cannot be read."""
        try:
            return self.blocklist.contains(addr)
        except (OSError, UnicodeDecodeError) as exc:
            log.error("cannot read the blocklist %s: %s", self.config.blocklist_file, exc)
            return None

    async def login(self, addr: str, password: str) -> str | None:
        """Return the hash Dovecot should compare with; create the account if allowed.

        A blocked address is refused even if its account still exists. An
        unreadable blocklist keeps existing accounts working but creates no
        new one, since it might be on the list.
        """
        blocked = self.is_blocked(addr)
        if blocked:
            log.warning("login refused: %s is blocked", addr)
            return None
        existing = self.lookup(addr)
        if existing is not None:
            return existing
        if blocked is None:
            log.warning("not creating account %s: the blocklist cannot be read", addr)
            return None
        decision = check_creation_allowed(self.config, addr, password)
        if decision.allowed:
            decision = self.resource_gate(self.config)
        if not decision.allowed:
            log.warning("not creating account %s: %s", addr, decision.reason)
            return None
        async with self._address_lock(addr):
            existing = self.lookup(addr)
            if existing is not None:
                return existing
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._creators, self._create, addr, password)

    def _create(self, addr: str, password: str) -> str | None:
        """Hash the password and create the account (blocking; runs in a worker thread).

        No lock: :meth:`User.create` makes the account appear atomically,
        and a racing first login, in this process or another, gets the hash
        that won, so a password is never overwritten.
        """
        user = self.config.get_user(addr)
        created, password_hash = user.create(HASH_SCHEME_PREFIX + hash_password(password))
        if created:
            log.info("Created address: %s", addr)
            self.counters.inc("chatmail_accounts_created_total")
        elif password_hash is None:
            log.warning("login refused: the password file of %s is empty (blocked)", addr)
        return password_hash

    @contextlib.asynccontextmanager
    async def _address_lock(self, addr: str) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(addr, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[addr]


# --- HTTP/1.1 ------------------------------------------------------------


class HttpError(Exception):
    """A request that cannot be served; the connection is closed after the reply."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]
    body: bytes

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return connection == "keep-alive"
        return connection != "close"


_TOKEN_CHARS = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """Read one request; None on a clean end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise HttpError(400, "connection closed in the middle of the request head") from None
        return None
    except asyncio.LimitOverrunError:
        raise HttpError(413, f"request head larger than {MAX_HEADER_BYTES} bytes") from None

    lines = head.decode("latin-1").lstrip("\r\n").split("\r\n")
    request_line, header_lines = lines[0], [line for line in lines[1:] if line]
    parts = request_line.split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0") or not _TOKEN_CHARS.match(parts[0]):
        raise HttpError(400, f"malformed request line: {request_line[:80]!r}")
    method, target, version = parts

    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN_CHARS.match(name):
            raise HttpError(400, f"malformed header line: {line[:80]!r}")
        name = name.lower()
        value = value.strip()
        if name in headers and name in ("content-length", TOKEN_HEADER):
            raise HttpError(400, f"repeated header: {name}")
        headers[name] = value

    if "transfer-encoding" in headers:
        raise HttpError(400, "Transfer-Encoding is not supported, send Content-Length")
    length_text = headers.get("content-length", "0")
    # ASCII digits only: str.isdigit() also takes "²" or "٣", which int() then rejects.
    if not CONTENT_LENGTH_PATTERN.fullmatch(length_text):
        raise HttpError(400, f"invalid Content-Length: {length_text[:20]!r}")
    length = int(length_text)
    if length > MAX_BODY_BYTES:
        raise HttpError(413, f"body of {length} bytes is larger than {MAX_BODY_BYTES}")
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise HttpError(400, "connection closed before the end of the body") from None
    return Request(method, target, version, headers, body)


def render_response(status: int, body: bytes = b"", close: bool = False) -> bytes:
    head = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}",
        f"Content-Length: {len(body)}",
        "Content-Type: text/plain; charset=utf-8",
    ]
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


def user_name(raw: bytes) -> str | None:
    """The account name of a login, lower-cased; None unless the raw name is printable ASCII.

    Checked before lower-casing: Unicode case folding maps some non-ASCII
    letters onto ASCII ones (KELVIN SIGN to ``k``, LATIN CAPITAL I WITH DOT
    to ``i̇``), which would make a second spelling of an existing account.
    Account names are ASCII only, so nothing else can name one.
    """
    if not raw.isascii() or any(byte < 0x21 or byte == 0x7F for byte in raw):
        return None
    return raw.decode("ascii").lower()


class DoveauthServer:
    """The HTTP front of :class:`AccountStore` for Dovecot's Lua passdb/userdb."""

    def __init__(self, store: AccountStore, token: str) -> None:
        self.store = store
        self._token = token.encode("ascii")

    async def start(self, host: str, port: int) -> asyncio.Server:
        """Bind and start accepting connections (port 0 picks a free port)."""
        return await asyncio.start_server(self.serve_connection, host, port, limit=MAX_HEADER_BYTES)

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve requests on one connection until it closes, idles or a request is bad.

        A connection that does not complete a request within
        IDLE_TIMEOUT_SECONDS is closed: a timer cancels this task. A timer
        rather than ``asyncio.wait_for`` because that starts a task per
        request, which cost a third of the time of a login.
        """
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        try:
            while True:
                close = True
                timer = loop.call_later(IDLE_TIMEOUT_SECONDS, task.cancel)
                try:
                    request = await read_request(reader)
                    timer.cancel()
                    if request is None:
                        break
                    close = not request.keep_alive
                    status, body = await self.dispatch(request)
                except HttpError as exc:
                    log.warning("bad request: %s", exc)
                    status, body, close = exc.status, f"{exc}\n".encode(), True
                finally:
                    timer.cancel()
                writer.write(render_response(status, body, close))
                if writer.transport.get_write_buffer_size():
                    await writer.drain()
                if close:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Idle for too long, or shutting down. This task is the top of its own connection (the
            # streams machinery started it), so there is nobody to propagate
            # to; ending quietly avoids an "exception in callback" log line.
            pass
        finally:
            writer.close()
            # Cancelled while closing (shutdown, right after the peer left): the same
            # quiet end as above, not an "exception in callback" in the log.
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def dispatch(self, request: Request) -> tuple[int, bytes]:
        """Answer one well-formed request with a status and a body."""
        token = request.headers.get(TOKEN_HEADER, "").encode("latin-1")
        if not hmac.compare_digest(token, self._token):
            log.warning("request without a valid %s header refused", TOKEN_HEADER)
            return 403, b""
        if request.target not in ("/passdb", "/userdb"):
            return 404, b""
        if request.method != "POST":
            return 405, b""
        try:
            if request.target == "/passdb":
                return await self.passdb(request.body)
            return self.userdb(request.body)
        except HttpError:
            raise
        except Exception:
            log.exception("error while serving %s", request.target)
            return 500, b""

    async def passdb(self, body: bytes) -> tuple[int, bytes]:
        raw_user, sep, raw_password = body.partition(b"\n")
        if not sep:
            raise HttpError(400, "passdb body must be <user>\\n<password>")
        addr = user_name(raw_user)
        if addr is None or not self.store.is_local(addr):
            return 404, b""
        # Dovecot compares bytes; keep undecodable bytes as they are.
        password = raw_password.decode("utf-8", "surrogateescape")
        password_hash = await self.store.login(addr, password)
        if password_hash is None:
            return 404, b""
        return 200, password_hash.encode("utf-8")

    def userdb(self, body: bytes) -> tuple[int, bytes]:
        addr = user_name(body)
        if addr is not None and self.store.is_local(addr) and self.store.lookup(addr) is not None:
            return 200, b""
        return 404, b""


# --- command line --------------------------------------------------------


def write_token_file(path: Path) -> str:
    """Write a fresh random token (64 hex digits) readable only by this user; return it.

    Written to a temporary file and renamed, so a reader never sees a
    partial token, and created with mode 0600 from the start (no window in
    which the umask decides).
    """
    token = secrets.token_hex(32)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fp:
            fp.write(token)  # no newline: whatever way the reader reads, it gets the token
            fp.flush()
            os.fsync(fp.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return token


async def serve(config: Config, host: str, port: int, token_file: Path) -> None:
    """Write the token, bind, and serve until cancelled."""
    token = write_token_file(token_file)
    store = AccountStore(config)
    server = await DoveauthServer(store, token).start(host, port)
    bound_host, bound_port = server.sockets[0].getsockname()[:2]
    log.info("doveauth listening on %s:%s", bound_host, bound_port)
    try:
        async with server:
            await server.serve_forever()
    finally:
        store.counters.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``doveauth`` command."""
    parser = argparse.ArgumentParser(
        prog="doveauth",
        description="Serve Dovecot's Lua passdb/userdb over HTTP on the loopback "
        "interface and create chatmail accounts on first login.",
    )
    parser.add_argument("config", type=Path, metavar="CONFIG", help="path of chatmail.ini")
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="address to listen on (default: doveauth_listen from CONFIG, 127.0.0.1:10090)",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        metavar="PATH",
        help="where to write the shared secret clients must send (default: doveauth_token_file from CONFIG)",
    )
    add_verbose_flag(parser)
    args, config = parse_args_and_config(parser, argv)
    try:
        host, port = parse_listen(args.listen or config.doveauth_listen)
    except ValueError as exc:
        parser.error(str(exc))
    return run_daemon("doveauth", serve(config, host, port, args.token_file or config.doveauth_token_file))


if __name__ == "__main__":
    raise SystemExit(main())
