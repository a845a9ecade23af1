"""What every chatmaild daemon's command line shares: reading chatmail.ini once, with a
usage error that names the file and the key, and running the event loop with a clear exit
status (1 when the daemon cannot start, e.g. its port or socket is taken)."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Coroutine, Sequence
from typing import Any

from .config import Config, ConfigError, read_config
from .logsetup import setup_logging

log = logging.getLogger(__name__)


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
    return args, config


def run_daemon(name: str, main_coroutine: Coroutine[Any, Any, None]) -> int:
    """Run the daemon until it ends or is interrupted; 1 if it could not start."""
    try:
        asyncio.run(main_coroutine)
    except OSError as exc:
        log.error("%s cannot start: %s", name, exc)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
