"""``chatmail``: the operator's command for a running relay.

One command with subcommands, reading the same chatmail.ini as the daemons:

* ``chatmail dns`` prints the DNS zone the relay needs; ``--check`` compares
  it with what the resolver returns;
* ``chatmail status`` shows units, queue, certificate, storage and switches;
* ``chatmail accounts`` lists, deletes, blocks and unblocks accounts;
* ``chatmail metrics`` prints the relay's Prometheus metrics, or writes them
  for the node exporter's textfile collector (a timer does so on NixOS).

Exit status, for scripts: 0 all is well, 1 a check found a problem (a
record missing, a unit down, no such account), 2 the command line or the
configuration is wrong.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import logging.handlers
import os
import stat
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from . import accounts, dnszone, metrics, status
from .cli import DEFAULT_CONFIG, Runner, run_command
from .config import Config, ConfigError, read_config
from .fsreport import human_size
from .logsetup import setup_logging

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2

SYSLOG_SOCKET = "/dev/log"
"""Changes to accounts also go to the system log (the journal), so they outlive the terminal."""


class UsageError(Exception):
    """A mistake on the command line or in chatmail.ini: exit status 2."""


def _add_common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # On the top level and on every subcommand, so `chatmail dns --config X` works too;
    # SUPPRESS keeps a subcommand from overwriting a value given before it.
    default = DEFAULT_CONFIG if top else argparse.SUPPRESS
    parser.add_argument(
        "--config",
        type=Path,
        default=default,
        metavar="PATH",
        help=f"path of chatmail.ini (default: {DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="log debug messages too",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; every subcommand has its own --help."""
    parser = argparse.ArgumentParser(
        prog="chatmail",
        description="Look after a chatmail relay: its DNS zone, its health, its accounts and its metrics.",
        epilog="Exit status: 0 all is well, 1 a check found a problem, 2 usage or configuration error.",
    )
    _add_common(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    dns = sub.add_parser(
        "dns",
        help="print the relay's DNS zone, or check what is published",
        description="Print every DNS record the relay needs in BIND zone-file format, computed from "
        "chatmail.ini and the DKIM key; with --check, look each up through the system resolver.",
    )
    _add_common(dns, top=False)
    dns.add_argument(
        "--check", action="store_true", help="compare with DNS; exit 1 if a record is missing or wrong"
    )
    dns.add_argument(
        "--ipv4", action="append", default=[], metavar="IP", help="an IPv4 address of the relay (repeatable)"
    )
    dns.add_argument(
        "--ipv6", action="append", default=[], metavar="IP", help="an IPv6 address of the relay (repeatable)"
    )
    dns.add_argument(
        "--dkim-key",
        type=Path,
        metavar="PATH",
        help="DKIM private key (default: dkim_key_file of chatmail.ini)",
    )
    dns.add_argument(
        "--dkim-selector", metavar="NAME", help="DKIM selector (default: dkim_selector, opendkim)"
    )
    dns.add_argument(
        "--acme-account-uri",
        metavar="URI",
        help="ACME account for the CAA record (default: the one account lego registered, if any)",
    )
    dns.add_argument(
        "--caa-issuer",
        metavar="DOMAIN",
        help=f"CA allowed to issue in the CAA record (default with ACME: {dnszone.DEFAULT_CAA_ISSUER}); "
        "'none' leaves CAA out",
    )
    dns.add_argument(
        "--tlsrpt-rua",
        metavar="URI",
        help="where TLS reports go (default: mailto:postmaster@DOMAIN); cleartext reports are "
        "refused by chatmail accounts, so point it at a mailbox elsewhere",
    )
    dns.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="per lookup (default 10)")

    st = sub.add_parser(
        "status",
        help="units, mail queue, certificate, accounts, disk, new-account switch, last expiry run",
        description="One screen about the relay's health; exit 1 if a unit is down, the certificate "
        f"expires within {status.CERT_WARNING_DAYS} days or the last expiry run failed.",
    )
    _add_common(st, top=False)
    st.add_argument("--cert", type=Path, metavar="PATH", help="certificate to check (default: the relay's)")

    acc = sub.add_parser(
        "accounts",
        help="list, count, delete and block accounts",
        description="Accounts of this relay. Every change is logged (address and action, never a "
        "password or mail) to stderr and the system log.",
    )
    _add_common(acc, top=False)
    acc_sub = acc.add_subparsers(dest="action", metavar="ACTION", required=True)
    lst = acc_sub.add_parser(
        "list",
        help="address, day of last login and mail stored of each account",
        description="List the accounts: address, day of the last login (UTC) and bytes of mail stored.",
    )
    _add_common(lst, top=False)
    lst.add_argument("--count", action="store_true", help="print only the number of accounts")
    for name, text in (
        ("delete", "remove an account with all its mail; a later login creates it anew, empty"),
        ("block", "delete an account and refuse every later login of the address"),
        ("unblock", "allow a blocked address again (its next login creates a new, empty account)"),
    ):
        action = acc_sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        _add_common(action, top=False)
        action.add_argument("address", metavar="ADDRESS")
        if name != "unblock":
            action.add_argument(
                "--yes", action="store_true", help="do not ask (required when not on a terminal)"
            )

    met = sub.add_parser(
        "metrics",
        help="print the relay's Prometheus metrics, or write them for the node exporter",
        description="Add up the daemons' event counters (deliveries accepted, refusals by SMTP code, "
        "accounts created, pushes, expiry removals) from metrics_dir and measure the mailboxes "
        "(accounts, messages and bytes stored, pushes waiting); print the Prometheus text format. "
        "No address or other private data is part of any metric.",
    )
    _add_common(met, top=False)
    met.add_argument(
        "--textfile",
        type=Path,
        metavar="PATH",
        help=f"write to PATH atomically instead of printing (a directory gets {metrics.TEXTFILE_NAME}); "
        "for the node exporter's textfile collector",
    )
    return parser


# --- dns ---------------------------------------------------------------------


def zone_settings(
    config: Config, args: argparse.Namespace, runner: Runner, acme_accounts: Path
) -> dnszone.ZoneSettings:
    """The zone's inputs from chatmail.ini, the command line and the host."""
    if config.ipv4_relay:
        raise UsageError(f"{config.mail_domain} is an IP-literal relay: it has no DNS zone")
    ipv4, ipv6 = list(args.ipv4), list(args.ipv6)
    for option, given, version in (("--ipv4", ipv4, 4), ("--ipv6", ipv6, 6)):
        for ip in given:
            try:
                parsed = ipaddress.ip_address(ip)
            except ValueError:
                raise UsageError(f"{option} {ip!r}: not an IP address") from None
            if parsed.version != version:
                raise UsageError(f"{option} {ip}: not an IPv{version} address")
    if not ipv4 and not ipv6:
        ipv4, ipv6 = dnszone.host_addresses(runner)
        if config.disable_ipv6:
            ipv6 = []
        if not ipv4 and not ipv6:
            raise UsageError("the host has no global address; give --ipv4/--ipv6")

    key_file = args.dkim_key or config.dkim_key_file
    dkim_value = dnszone.read_dkim_value(key_file)

    acme = config.tls_cert_mode == "acme"
    issuer = (
        args.caa_issuer if args.caa_issuer is not None else (dnszone.DEFAULT_CAA_ISSUER if acme else None)
    )
    if issuer == "none":
        issuer = None
    account = args.acme_account_uri
    if account is None and issuer and acme:
        account = dnszone.find_acme_account_uri(acme_accounts)
    return dnszone.ZoneSettings(
        domain=config.mail_domain,
        ipv4=tuple(ipv4),
        ipv6=tuple(ipv6),
        dkim_selector=args.dkim_selector or config.dkim_selector,
        dkim_value=dkim_value,
        mta_sts=config.tls_cert_mode != "self-signed",
        caa_issuer=issuer,
        acme_account_uri=account,
        tlsrpt_rua=args.tlsrpt_rua,
    )


def cmd_dns(
    config: Config,
    args: argparse.Namespace,
    out: TextIO,
    runner: Runner,
    resolve: dnszone.Resolve | None,
    acme_accounts: Path,
) -> int:
    settings = zone_settings(config, args, runner, acme_accounts)
    records = dnszone.build_zone(settings)
    if not args.check:
        out.write(dnszone.render_zone(records, config.mail_domain, settings.dkim_value))
        return EXIT_OK
    rows = dnszone.check_zone(records, resolve or dnszone.system_resolver(args.timeout))
    out.write(dnszone.format_check(rows))
    return EXIT_OK if all(row.ok for row in rows) else EXIT_PROBLEM


# --- status ------------------------------------------------------------------


def cmd_status(config: Config, args: argparse.Namespace, out: TextIO, runner: Runner) -> int:
    result = status.collect_status(config, runner=runner, cert_path=args.cert)
    out.write(status.format_status(result))
    return EXIT_PROBLEM if result.problems() else EXIT_OK


# --- accounts ----------------------------------------------------------------


def _confirm(args: argparse.Namespace, question: str, stdin: TextIO, out: TextIO) -> bool:
    if args.yes:
        return True
    if not stdin.isatty():
        raise UsageError("not on a terminal: add --yes to confirm")
    out.write(f"{question} [y/N] ")
    out.flush()
    return stdin.readline().strip().lower() in ("y", "yes")


def cmd_accounts(config: Config, args: argparse.Namespace, out: TextIO, stdin: TextIO) -> int:
    if args.action == "list":
        if args.count:
            out.write(f"{accounts.count_accounts(config.mailboxes_dir)}\n")
            return EXIT_OK
        rows = [
            (
                info.addr,
                time.strftime("%Y-%m-%d", time.gmtime(info.last_login)),
                human_size(info.mail_bytes) + "B",
            )
            for info in accounts.iter_accounts(config.mailboxes_dir)
        ]
        width = max((len(row[0]) for row in rows), default=len("address"))
        out.write(f"{'address':<{width}}  {'last login':<10}  mail\n")
        out.writelines(f"{addr:<{width}}  {day:<10}  {mail}\n" for addr, day, mail in rows)
        return EXIT_OK

    addr = args.address
    try:
        accounts.account_dir(config, addr)
    except accounts.AccountError as exc:
        raise UsageError(str(exc)) from None
    try:
        if args.action == "unblock":
            changed = accounts.unblock_account(config, addr)
            out.write(f"{addr} unblocked\n" if changed else f"{addr} was not blocked\n")
            return EXIT_OK
        if args.action == "delete":
            if not _confirm(args, f"Delete {addr} and all its mail?", stdin, out):
                out.write("nothing deleted\n")
                return EXIT_PROBLEM
            files = accounts.delete_account(config, addr)
            out.write(f"{addr} deleted ({files} files)\n")
            return EXIT_OK
        if not _confirm(args, f"Block {addr} and delete all its mail?", stdin, out):
            out.write("nothing changed\n")
            return EXIT_PROBLEM
        newly, files = accounts.block_account(config, addr)
        out.write(f"{addr} {'blocked' if newly else 'was already blocked'}, {files} files deleted\n")
        return EXIT_OK
    except accounts.AccountError as exc:
        log.error("%s", exc)
        return EXIT_PROBLEM


# --- metrics -----------------------------------------------------------------


def cmd_metrics(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    from .fsreport import write_atomic
    from .metadata import QUEUE_DIR

    if config.metrics_dir is None:
        log.warning("metrics_dir is not set in %s: only the measured gauges, no counters", config.path)
    values = metrics.collect(config.metrics_dir, config.mailboxes_dir, config.mailboxes_dir / QUEUE_DIR)
    text = metrics.render(values)
    if args.textfile is None:
        out.write(text)
        return EXIT_OK
    path = args.textfile / metrics.TEXTFILE_NAME if args.textfile.is_dir() else args.textfile
    try:
        write_atomic(path, text)
    except OSError as exc:
        log.error("cannot write %s: %s", path, exc)
        return EXIT_PROBLEM
    return EXIT_OK


# --- main ----------------------------------------------------------------------


def _add_syslog(address: str | None) -> logging.Handler | None:
    """Send this package's INFO and above to the system log too, if it has a socket."""
    if address is None:
        return None
    try:
        if not stat.S_ISSOCK(os.stat(address).st_mode):
            return None
        handler = logging.handlers.SysLogHandler(address=address)
    except OSError:
        return None
    handler.ident = "chatmail: "
    handler.setLevel(logging.INFO)
    logging.getLogger("chatmaild").addHandler(handler)
    return handler


def main(
    argv: Sequence[str] | None = None,
    *,
    out: TextIO | None = None,
    stdin: TextIO | None = None,
    runner: Runner = run_command,
    resolve: dnszone.Resolve | None = None,
    acme_accounts: Path = dnszone.ACME_ACCOUNTS_DIR,
    syslog_address: str | None = SYSLOG_SOCKET,
) -> int:
    """Entry point of ``chatmail``; the keyword arguments stand in for the system in tests."""
    out = out or sys.stdout
    stdin = stdin or sys.stdin
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    handler = _add_syslog(syslog_address) if args.command == "accounts" else None
    try:
        config = read_config(args.config)
        if args.command == "dns":
            return cmd_dns(config, args, out, runner, resolve, acme_accounts)
        if args.command == "status":
            return cmd_status(config, args, out, runner)
        if args.command == "metrics":
            return cmd_metrics(config, args, out)
        return cmd_accounts(config, args, out, stdin)
    except (ConfigError, UsageError, dnszone.ZoneError) as exc:
        print(f"chatmail {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if handler is not None:
            logging.getLogger("chatmaild").removeHandler(handler)
            handler.close()


if __name__ == "__main__":
    raise SystemExit(main())
