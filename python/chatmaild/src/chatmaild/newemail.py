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
request. Credentials are never logged, and the answer is marked
``Cache-Control: no-store`` so no proxy keeps a copy.
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import string
from urllib.parse import quote

from aiohttp import web

from .cli import add_config_argument
from .config import Config, ConfigError, read_config
from .doveauth import parse_listen
from .logsetup import add_verbose_flag, setup_logging

log = logging.getLogger(__name__)

ROUTES = ("/new", "/cgi-bin/newemail.py")
USERNAME_ALPHABET = string.ascii_lowercase + string.digits
PASSWORD_ALPHABET = string.ascii_letters + string.digits + string.punctuation
"""Punctuation included, as upstream: more entropy per character; doveauth handles any byte."""
PASSWORD_EXTRA_LENGTH = 3
"""Suggested passwords are this much longer than the minimum doveauth accepts."""
CONFIG_KEY = web.AppKey("config", Config)


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
    """Answer any GET or POST with new credentials (clients POST; browsers GET)."""
    body = json.dumps(new_credentials(request.app[CONFIG_KEY]))
    return web.Response(
        text=body + "\n",
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def make_app(config: Config) -> web.Application:
    """Build the web application (separate from serving, for tests)."""
    app = web.Application()
    app[CONFIG_KEY] = config
    for route in ROUTES:
        app.router.add_route("GET", route, handle_new)
        app.router.add_route("POST", route, handle_new)
    return app


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
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        config = read_config(args.config)
        host, port = parse_listen(args.listen or config.newemail_listen)
    except (ConfigError, ValueError) as exc:
        parser.error(str(exc))
    log.info("serving %s for %s on %s:%s", ", ".join(ROUTES), config.mail_domain, host, port)
    try:
        # No access log: the peer is nginx, and request lines would only add noise.
        web.run_app(make_app(config), host=host, port=port, access_log=None, print=None)
    except OSError as exc:
        log.error("chatmail-newemail cannot start on %s:%s: %s", host, port, exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
