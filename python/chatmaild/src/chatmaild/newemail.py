"""chatmail-newemail: the ``/new`` endpoint that suggests fresh credentials.

Delta Chat sets up an account on a chatmail relay from the QR code
``DCACCOUNT:https://<domain>/new``: it POSTs to that URL and gets back an
address and a password chosen by the relay. Nothing is stored here. The
account comes into being when the client first logs in with them (doveauth
creates it then), so this service needs no state, no lock and no access to
the mailboxes; the random username makes collisions with existing accounts
negligible (36^9 names by default), and doveauth would refuse the login of
an existing name with a different password anyway.

Upstream relays run this as a CGI script; here it is a small aiohttp service
on ``newemail_listen`` that nginx proxies ``/new`` (and the legacy
``/cgi-bin/newemail.py``) to, which avoids a CGI runner and a process per
request. systemd may hold the listening socket and start the service on the first
request (socket activation, with ``--exit-when-idle``): it is needed only when someone
sets up an account. Credentials are never logged, and the answer is marked
``Cache-Control: no-store`` so no proxy keeps a copy.

Each client address may ask NEW_BURST times at once and then NEW_PER_MINUTE
times a minute; beyond that it gets 429 with ``Retry-After``. The address
is nginx's ``X-Real-IP`` header when the request comes from loopback (our
nginx), else the peer itself; IPv6 clients are counted per /64, the block a
single host usually has. nginx limits ``/new`` too; this is the second line.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import math
import secrets
import string
from urllib.parse import quote

from aiohttp import web

from . import activation
from .cli import add_config_argument, add_exit_when_idle_argument, parse_listen, run_daemon
from .config import Config, ConfigError, read_config
from .logsetup import add_verbose_flag, setup_logging
from .ratelimit import RateLimiter, format_until

log = logging.getLogger(__name__)

ROUTES = ("/new", "/cgi-bin/newemail.py")
USERNAME_ALPHABET = string.ascii_lowercase + string.digits
PASSWORD_ALPHABET = string.ascii_letters + string.digits + string.punctuation
"""Punctuation included, as upstream: more entropy per character; doveauth handles any byte."""
PASSWORD_EXTRA_LENGTH = 3
"""Suggested passwords are this much longer than the minimum doveauth accepts."""
CONFIG_KEY = web.AppKey("config", Config)
LIMITER_KEY = web.AppKey("limiter", RateLimiter)
NEW_PER_MINUTE = 6
"""Sustained credential requests per client address and minute."""
NEW_BURST = 10
"""Requests a client address may make at once (a family setting up phones together)."""
CLIENT_ADDRESS_HEADER = "X-Real-IP"
"""Set by our nginx to the real client address; trusted only from a loopback peer."""
IPV6_PREFIX_LENGTH = 64


def client_key(request: web.Request) -> str:
    """The rate-limit key of a request: the client address, or its /64 for IPv6."""
    peer = request.remote or ""
    address = _ip(peer)
    forwarded = request.headers.get(CLIENT_ADDRESS_HEADER)
    if forwarded is not None and address is not None and address.is_loopback:
        address = _ip(forwarded.strip())
        if address is None:
            return "unparseable-forwarded-address"
    if address is None:
        return peer
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_PREFIX_LENGTH), strict=False))
    return str(address)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def random_string(alphabet: str, length: int) -> str:
    """``length`` characters drawn uniformly from ``alphabet`` by the OS's CSPRNG."""
    return "".join(secrets.choice(alphabet) for _ in range(length))


def dclogin_url(config: Config, email: str, password: str) -> str:
    """The ``dclogin:`` URL that also tells the client to accept a self-signed certificate.

    ``ic=3`` is that permission; for a relay addressed by IP the IMAP and
    SMTP hosts are spelled out, since there is no DNS name to look up. The
    password is percent-encoded completely (it may contain ``&``, ``+``, ``%``).
    """
    url = f"dclogin:{quote(email, safe='@[]')}?p={quote(password, safe='')}&v=1"
    if config.ipv4_relay:
        url += f"&ih={config.ipv4_relay}&sh={config.ipv4_relay}"
    return url + "&ic=3"


def new_credentials(config: Config) -> dict[str, str]:
    """Fresh credentials for this relay as the JSON object the client expects.

    ``dclogin_url`` is added only when the relay uses a self-signed
    certificate: clients must then be told to accept it, and with a
    publicly trusted certificate the URL would only weaken that check.
    """
    username = random_string(USERNAME_ALPHABET, config.username_max_length)
    password = random_string(PASSWORD_ALPHABET, config.password_min_length + PASSWORD_EXTRA_LENGTH)
    email = f"{username}@{config.mail_domain}"
    answer = {"email": email, "password": password}
    if config.tls_cert_mode == "self-signed":
        answer["dclogin_url"] = dclogin_url(config, email, password)
    return answer


async def handle_new(request: web.Request) -> web.Response:
    """Answer any GET or POST with new credentials (clients POST; browsers GET), if not rate limited."""
    limiter = request.app[LIMITER_KEY]
    until = limiter.check(client_key(request))
    if until is not None:
        retry_after = max(1, math.ceil(until - limiter.clock()))
        log.info("/new: rate limited a client for %s s", retry_after)
        return web.Response(
            status=429,
            text=f"Too many requests for new accounts from your address; try again after {format_until(until)}\n",
            headers={"Retry-After": str(retry_after), "Cache-Control": "no-store"},
        )
    body = json.dumps(new_credentials(request.app[CONFIG_KEY]))
    return web.Response(
        text=body + "\n",
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def make_app(config: Config, limiter: RateLimiter | None = None) -> web.Application:
    """Build the web application (separate from serving, for tests)."""
    app = web.Application()
    app[CONFIG_KEY] = config
    app[LIMITER_KEY] = limiter if limiter is not None else RateLimiter(NEW_PER_MINUTE, NEW_BURST)
    for route in ROUTES:
        app.router.add_route("GET", route, handle_new)
        app.router.add_route("POST", route, handle_new)
    return app


async def serve(config: Config, host: str, port: int, exit_when_idle: float | None = None) -> None:
    """Serve ``/new`` on ``host:port``, or on the socket systemd passed for it, until cancelled.

    With ``exit_when_idle`` and a socket from systemd, return once no
    connection has been open and no request made for that many seconds
    (see :mod:`chatmaild.activation`).
    """
    # No access log: the peer is nginx, and request lines would only add noise.
    runner = web.AppRunner(make_app(config), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        inherited = activation.inherited_socket((host, port))
        site = web.SockSite(runner, inherited) if inherited else web.TCPSite(runner, host, port)
        await site.start()
        log.info("serving %s for %s on %s:%s", ", ".join(ROUTES), config.mail_domain, host, port)
        if exit_when_idle is not None and inherited is None:
            log.warning("--exit-when-idle ignored: the socket is our own, nobody would start us again")
            exit_when_idle = None
        if exit_when_idle is None:
            await asyncio.Event().wait()
            return
        server = runner.server
        assert server is not None  # set by runner.setup()
        await activation.wait_until_idle(
            exit_when_idle, lambda: bool(server.connections), lambda: server.requests_count
        )
        log.info("idle for %s s, leaving the socket to systemd", exit_when_idle)
    finally:
        # Stops listening, then lets requests in progress finish.
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``chatmail-newemail``."""
    parser = argparse.ArgumentParser(
        prog="chatmail-newemail",
        description="Serve /new: answer each GET or POST with a fresh random address and password "
        "for this relay, as JSON. Nothing is stored; the account is created on first login.",
    )
    add_config_argument(parser, optional=True)
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="address to listen on (default: newemail_listen from CONFIG, 127.0.0.1:10091)",
    )
    add_exit_when_idle_argument(parser)
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        config = read_config(args.config)
        host, port = parse_listen(args.listen or config.newemail_listen)
    except (ConfigError, ValueError) as exc:
        parser.error(str(exc))
    return run_daemon("chatmail-newemail", serve(config, host, port, args.exit_when_idle))


if __name__ == "__main__":
    raise SystemExit(main())
