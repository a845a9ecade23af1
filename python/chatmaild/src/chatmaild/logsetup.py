"""Logging set-up shared by the daemons' command lines.

The daemons run under systemd, whose journal adds timestamps and the unit
name, so the format is kept short: level, logger, message.
"""

from __future__ import annotations

import argparse
import logging


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    """Add ``--verbose`` to a daemon's argument parser."""
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages too")


def setup_logging(verbose: bool = False) -> None:
    """Send log records to stderr at INFO (or DEBUG with ``--verbose``)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        force=True,
    )
    if not verbose:
        # aiosmtpd logs every SMTP command with the peer and addresses at INFO.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
