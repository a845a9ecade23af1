"""chatmail-lastlogin: remember the day of each account's last IMAP login.

Dovecot's ``last_login`` plugin writes ``last-login/<user>`` (Dovecot adds
``shared/``) with the login time in seconds to a dict on every IMAP login.
This service is that dict. It keeps no database: the day is stored as the
modification time of the account's ``password`` file, which is where the
job that removes inactive accounts looks. Only the UTC day is kept, so the
relay never holds more than day precision about when someone was online,
and the file is touched only when the day changes.

Only plausible sets are taken: the key must name the transaction's own
user (one login cannot refresh, or age, another account), and the time
must lie after 1970 and not more than MAX_FUTURE_SECONDS ahead. A time of
0 or less would date the last login to 1970 and let the expiry job delete
the account.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from .cli import add_exit_when_idle_argument, add_socket_arguments, parse_args_and_config, run_daemon
from .config import Config
from .dictproxy import DictProxy
from .logsetup import add_verbose_flag
from .user import User

log = logging.getLogger(__name__)

SECONDS_PER_DAY = 86400
KEY_PREFIX = "last-login/"
UNIX_TIME = re.compile(r"[0-9]{1,12}")
"""ASCII digits only: int() would also read other scripts' digits and "1_0"."""
MAX_FUTURE_SECONDS = 3600
"""Login times further ahead than this (clock skew) are refused."""


def day_start(timestamp: int) -> int:
    """Round a Unix time down to the start of its UTC day."""
    return timestamp // SECONDS_PER_DAY * SECONDS_PER_DAY


def set_last_login_day(user: User, timestamp: int) -> bool:
    """Set the password file's mtime (and atime) to the day of ``timestamp``.

    Returns False if the account has no password file. Nothing is written
    when the file already carries that day.
    """
    day = day_start(timestamp)
    try:
        current = int(user.password_path.stat().st_mtime)
    except FileNotFoundError:
        return False
    if current != day:
        os.utime(user.password_path, (day, day))
    return True


def address_from_key(key: str) -> str | None:
    """Return ``<addr>`` of ``shared/last-login/<addr>`` (``shared/`` optional), else None."""
    if key.startswith("shared/"):
        key = key[len("shared/") :]
    if not key.startswith(KEY_PREFIX):
        return None
    return key[len(KEY_PREFIX) :] or None


class LastLoginDictProxy(DictProxy):
    """The dict behind ``last_login``: accepts sets of ``last-login/<addr>`` only."""

    def __init__(self, config: Config, now: Callable[[], float] = time.time) -> None:
        self.config = config
        self.now = now

    async def handle_set(self, user: str, key: str, value: str) -> bool:
        addr = address_from_key(key)
        if addr is None:
            log.warning("refusing set of key %s: expected last-login/<address>", key)
            return False
        if not user or addr.lower() != user.lower():
            log.warning("refusing last-login of %s in a transaction of another user", addr)
            return False
        if not UNIX_TIME.fullmatch(value):
            log.warning("refusing last-login of %s: %r is not a Unix time", addr, value[:40])
            return False
        timestamp = int(value)
        if not 0 < timestamp <= self.now() + MAX_FUTURE_SECONDS:
            log.warning("refusing last-login of %s: implausible time %s", addr, timestamp)
            return False
        try:
            account = self.config.get_user(addr)
        except ValueError as exc:
            log.warning("refusing last-login: %s", exc)
            return False
        if not account.exists():
            # Nothing to record, and no reason to make Dovecot log an error for it.
            log.info("last-login for %s, which has no account, ignored", addr)
            return True
        set_last_login_day(account, timestamp)
        return True


async def serve(config: Config, socket_path: Path, exit_when_idle: float | None = None) -> None:
    """Serve the last-login dict on ``socket_path`` until cancelled (or idle, see
    :meth:`DictProxy.serve_forever`)."""
    await LastLoginDictProxy(config).serve_forever(socket_path, exit_when_idle)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``chatmail-lastlogin`` command."""
    parser = argparse.ArgumentParser(
        prog="chatmail-lastlogin",
        description="Serve the dict of Dovecot's last_login plugin: keep the day of each "
        "account's last IMAP login as the mtime of its password file.",
    )
    add_socket_arguments(parser, config_key="lastlogin_socket")
    add_exit_when_idle_argument(parser)
    add_verbose_flag(parser)
    args, config = parse_args_and_config(parser, argv)
    return run_daemon("chatmail-lastlogin", serve(config, args.socket, args.exit_when_idle))


if __name__ == "__main__":
    raise SystemExit(main())
