"""What every chatmaild daemon's command line shares: reading chatmail.ini once, with a
usage error that names the file and the key, and running the event loop with a clear exit
status (1 when the daemon cannot start, e.g. its port or socket is taken)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from .config import Config, ConfigError, read_config
from .logsetup import setup_logging

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path("/etc/chatmail/chatmail.ini")
"""Where the NixOS module puts chatmail.ini; the periodic jobs default to it."""


def add_config_argument(parser: argparse.ArgumentParser, optional: bool = False) -> None:
    """The CONFIG argument: required for daemons, optional (DEFAULT_CONFIG) for jobs."""
    if optional:
        parser.add_argument(
            "config",
            nargs="?",
            type=Path,
            default=DEFAULT_CONFIG,
            metavar="CONFIG",
            help=f"path of chatmail.ini (default: {DEFAULT_CONFIG})",
        )
    else:
        parser.add_argument("config", type=Path, metavar="CONFIG", help="path of chatmail.ini")


def add_socket_arguments(
    parser: argparse.ArgumentParser, default_socket: Path | None = None, config_key: str | None = None
) -> None:
    """CONFIG and --socket, for the daemons Dovecot reaches over a unix socket.

    With ``config_key``, the socket defaults to that chatmail.ini key (the NixOS module
    and the lab write it), so the path is named once; ``default_socket`` is the older,
    fixed default of daemons that do not read it from chatmail.ini yet.
    """
    add_config_argument(parser)
    where = f"{config_key} from CONFIG" if config_key else str(default_socket)
    parser.add_argument(
        "--socket",
        type=Path,
        default=default_socket,
        metavar="PATH",
        help=f"unix socket to listen on (default: {where})",
    )
    if config_key:
        parser.set_defaults(socket_config_key=config_key)


def add_exit_when_idle_argument(parser: argparse.ArgumentParser) -> None:
    """--exit-when-idle, for the daemons systemd starts on demand (socket activation)."""
    parser.add_argument(
        "--exit-when-idle",
        type=positive_seconds,
        metavar="SECONDS",
        help="when serving a socket passed by systemd: exit after SECONDS with no open "
        "connection and nothing pending; systemd starts the daemon again on the next connection",
    )


def positive_seconds(text: str) -> float:
    """argparse type: a number of seconds > 0, with an error that quotes the input."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def parse_listen(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:10090`` for IPv6)."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid listen address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:10090")
    return host, int(port)


def non_negative_int(text: str) -> int:
    """argparse type: a whole number >= 0, with an error that quotes the input."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def parse_args_and_config(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> tuple[argparse.Namespace, Config]:
    """Parse ``argv`` (the parser has a ``config`` argument and the verbose flag), set up
    logging and read the configuration; a bad configuration is a usage error (exit 2)."""
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        config = read_config(args.config)
    except ConfigError as exc:
        parser.error(str(exc))
    key = getattr(args, "socket_config_key", None)
    if key and args.socket is None:
        args.socket = getattr(config, key)
    return args, config


def run_daemon(name: str, main_coroutine: Coroutine[Any, Any, None]) -> int:
    """Run the daemon until it ends or is interrupted; 1 if it could not start."""
    import asyncio  # only daemons need it; the periodic jobs import this module too

    try:
        asyncio.run(main_coroutine)
    except OSError as exc:
        log.error("%s cannot start: %s", name, exc)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


Runner = Callable[[Sequence[str]], str]
"""Runs a command and returns its standard output; raises OSError or
subprocess.SubprocessError. Commands that ask the system (``ip``, ``systemctl``,
``postqueue``) take one, so tests can answer for the system."""

RUN_TIMEOUT_SECONDS = 30


def run_command(argv: Sequence[str]) -> str:
    """The real :data:`Runner`: the command's stdout, an exception if it fails."""
    import subprocess

    return subprocess.run(
        list(argv), check=True, capture_output=True, text=True, timeout=RUN_TIMEOUT_SECONDS
    ).stdout
