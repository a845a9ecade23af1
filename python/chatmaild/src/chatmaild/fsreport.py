"""chatmail-fsreport: daily statistics about accounts and storage.

An operator wants to know how many people use the relay and where the disk
goes, without a database and without looking at anyone's mail. Everything
needed is in the file system: an account is a directory under
``mailboxes_dir``, its last login is the ``password`` file's mtime (day
precision), and message sizes are file sizes. So the report counts

* accounts with a login (``all``), test accounts (names starting ``ci-``)
  and the other accounts active within 1, 7, 10, 30, 40, 80, 100 and 150 days;
* bytes of messages and of everything else (indexes, metadata);
* messages at or above 0, 100 KiB, 512 KiB, 1, 2, 5 and 10 MiB, optionally
  only for accounts not logged in for some days (to see what the retention
  settings would gain) and only in one maildir subdirectory.

Like ``chatmail-expire`` it streams the tree one account at a time. The
figures can also be written as Prometheus gauges for the node exporter's
textfile collector.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import TextIO

from .cli import add_config_argument, non_negative_int
from .config import ConfigError, read_config
from .expire import MESSAGE_DIRS, SECONDS_PER_DAY, iter_mailbox_files, iter_mailboxes
from .logsetup import setup_logging
from .user import PASSWORD_FILE

DEFAULT_LEGACY_METRICS = Path("/var/www/html/metrics")
TEXTFILE_NAME = "fsreport.prom"
CI_PREFIX = "ci-"
"""Accounts of automated tests; counted apart so they do not inflate the user figures."""
ACTIVE_DAYS = (1, 7, 10, 30, 40, 80, 100, 150)
KIB = 1024
MIB = 1024 * KIB
SIZE_THRESHOLDS = (0, 100 * KIB, 512 * KIB, 1 * MIB, 2 * MIB, 5 * MIB, 10 * MIB)
DEFAULT_PROGRESS_EVERY = 10000


@dataclasses.dataclass
class Report:
    """All figures of one run."""

    now: float
    accounts: int = 0
    ci_accounts: int = 0
    active: dict[int, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(ACTIVE_DAYS, 0))
    message_bytes: int = 0
    extra_bytes: int = 0
    size_bytes: dict[int, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(SIZE_THRESHOLDS, 0))
    size_count: dict[int, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(SIZE_THRESHOLDS, 0))

    @property
    def user_accounts(self) -> int:
        return self.accounts - self.ci_accounts


def collect(
    mailboxes_dir: Path,
    *,
    now: float,
    min_login_age_days: int = 0,
    mdir: str | None = None,
    maxnum: int | None = None,
    progress_every: int = DEFAULT_PROGRESS_EVERY,
    err: TextIO = sys.stderr,
) -> Report:
    """Walk ``mailboxes_dir`` once and return the figures.

    Directories without a password file are not accounts and are skipped.
    """
    report = Report(now=now)
    oldest_for_sizes = now - min_login_age_days * SECONDS_PER_DAY
    scanned = 0
    started = time.monotonic()
    for entry in iter_mailboxes(mailboxes_dir):
        if maxnum is not None and scanned >= maxnum:
            break
        scanned += 1
        if progress_every and scanned % progress_every == 0:
            print(
                f"fsreport: {scanned} directories scanned, {time.monotonic() - started:.1f}s",
                file=err,
                flush=True,
            )
        try:
            last_login = os.stat(os.path.join(entry.path, PASSWORD_FILE)).st_mtime
        except OSError:
            continue
        report.accounts += 1
        is_ci = entry.name.startswith(CI_PREFIX)
        if is_ci:
            report.ci_accounts += 1
        else:
            for days in ACTIVE_DAYS:
                if last_login >= now - days * SECONDS_PER_DAY:
                    report.active[days] += 1
        count_sizes = last_login <= oldest_for_sizes
        for info in iter_mailbox_files(entry.path):
            if not info.is_message:
                report.extra_bytes += info.size
                continue
            report.message_bytes += info.size
            if count_sizes and (mdir is None or info.parent == mdir):
                for threshold in SIZE_THRESHOLDS:
                    if info.size >= threshold:
                        report.size_bytes[threshold] += info.size
                        report.size_count[threshold] += 1
    return report


def human_size(n: float) -> str:
    """Decimal units (K = 1000), as disk vendors and ``df -H`` count."""
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _threshold_label(threshold: int) -> str:
    if threshold >= MIB:
        return f"{threshold // MIB}MiB"
    if threshold >= KIB:
        return f"{threshold // KIB}KiB"
    return str(threshold)


def format_report(report: Report, *, min_login_age_days: int, mdir: str | None) -> str:
    """The human-readable report (for the journal)."""
    lines = [
        f"accounts: {report.accounts} (ci: {report.ci_accounts}, users: {report.user_accounts})",
        "users active within: " + ", ".join(f"{d}d {report.active[d]}" for d in ACTIVE_DAYS),
        (
            f"storage: messages {human_size(report.message_bytes)}, other files "
            f"{human_size(report.extra_bytes)}, total {human_size(report.message_bytes + report.extra_bytes)}"
        ),
    ]
    scope = []
    if min_login_age_days:
        scope.append(f"accounts without login for {min_login_age_days}+ days")
    if mdir:
        scope.append(f"only in {mdir}/")
    lines.append("messages by size" + (f" ({', '.join(scope)})" if scope else "") + ":")
    for threshold in SIZE_THRESHOLDS:
        lines.append(
            f"  >= {_threshold_label(threshold):>6}: {report.size_count[threshold]:>10} messages, "
            f"{human_size(report.size_bytes[threshold]):>7}"
        )
    return "\n".join(lines)


def prometheus_text(report: Report) -> str:
    """The figures as Prometheus gauges (text exposition format)."""
    out: list[str] = []

    def gauge(name: str, help_text: str, samples: list[tuple[str, int]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} gauge")
        out.extend(f"{name}{labels} {value}" for labels, value in samples)

    total = report.message_bytes + report.extra_bytes
    gauge(
        "chatmail_storage_bytes",
        "Bytes in mailboxes, by kind of file.",
        [
            ('{kind="messages"}', report.message_bytes),
            ('{kind="extra"}', report.extra_bytes),
            ('{kind="total"}', total),
        ],
    )
    gauge(
        "chatmail_messages_bytes",
        "Bytes of messages at least min_size bytes large.",
        [(f'{{min_size="{t}"}}', report.size_bytes[t]) for t in SIZE_THRESHOLDS],
    )
    gauge(
        "chatmail_messages_count",
        "Number of messages at least min_size bytes large.",
        [(f'{{min_size="{t}"}}', report.size_count[t]) for t in SIZE_THRESHOLDS],
    )
    gauge(
        "chatmail_accounts",
        "Accounts with a password, all, CI test accounts and the others.",
        [
            ('{kind="all"}', report.accounts),
            ('{kind="ci"}', report.ci_accounts),
            ('{kind="user"}', report.user_accounts),
        ],
    )
    gauge(
        "chatmail_accounts_active",
        "Non-CI accounts that logged in within the last days.",
        [(f'{{days="{d}"}}', report.active[d]) for d in ACTIVE_DAYS],
    )
    return "\n".join(out) + "\n"


def legacy_metrics_text(report: Report) -> str:
    """The three gauges of the old public ``/metrics`` page."""
    return (
        "# TYPE accounts gauge\n"
        f"accounts {report.accounts}\n"
        "# TYPE ci_accounts gauge\n"
        f"ci_accounts {report.ci_accounts}\n"
        "# TYPE nonci_accounts gauge\n"
        f"nonci_accounts {report.user_accounts}\n"
    )


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` so that a scraper never reads half a file; mode 0644."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fp:
            fp.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None, *, now: float | None = None) -> int:
    """Entry point of ``chatmail-fsreport``; ``now`` (Unix time) is for tests."""
    parser = argparse.ArgumentParser(
        prog="chatmail-fsreport",
        description="Count accounts, recent logins and the storage used by messages of "
        "different sizes under mailboxes_dir, and print a report (optionally also "
        "Prometheus gauges). Reads only file names, sizes and times, never mail content.",
    )
    add_config_argument(parser, optional=True)
    parser.add_argument(
        "--days", type=non_negative_int, default=0, metavar="N", help="pretend that now is N days earlier"
    )
    parser.add_argument(
        "--min-login-age",
        type=non_negative_int,
        default=0,
        metavar="DAYS",
        help="count message sizes only for accounts whose last login is at least DAYS days old",
    )
    parser.add_argument(
        "--mdir",
        choices=sorted(MESSAGE_DIRS),
        help="count message sizes only in this maildir subdirectory",
    )
    parser.add_argument(
        "--maxnum", type=non_negative_int, metavar="N", help="stop after N account directories"
    )
    parser.add_argument(
        "--textfile",
        type=Path,
        metavar="PATH",
        help=f"also write Prometheus gauges to PATH (a directory gets {TEXTFILE_NAME})",
    )
    parser.add_argument(
        "--legacy-metrics",
        type=Path,
        nargs="?",
        const=DEFAULT_LEGACY_METRICS,
        metavar="FILE",
        help=f"also write the old accounts/ci_accounts/nonci_accounts gauges (default FILE: "
        f"{DEFAULT_LEGACY_METRICS})",
    )
    parser.add_argument(
        "--progress-every",
        type=non_negative_int,
        default=DEFAULT_PROGRESS_EVERY,
        metavar="N",
        help=f"print progress to stderr every N accounts, 0 for never (default: {DEFAULT_PROGRESS_EVERY})",
    )
    args = parser.parse_args(argv)
    setup_logging(False)
    try:
        config = read_config(args.config)
    except ConfigError as exc:
        parser.error(str(exc))

    current = (time.time() if now is None else now) - args.days * SECONDS_PER_DAY
    if not config.mailboxes_dir.is_dir():
        print(f"no mailboxes found at: {config.mailboxes_dir}", file=sys.stderr)
    report = collect(
        config.mailboxes_dir,
        now=current,
        min_login_age_days=args.min_login_age,
        mdir=args.mdir,
        maxnum=args.maxnum,
        progress_every=args.progress_every,
    )
    print(format_report(report, min_login_age_days=args.min_login_age, mdir=args.mdir))
    try:
        if args.textfile is not None:
            path = args.textfile / TEXTFILE_NAME if args.textfile.is_dir() else args.textfile
            write_atomic(path, prometheus_text(report))
        if args.legacy_metrics is not None:
            write_atomic(args.legacy_metrics, legacy_metrics_text(report))
    except OSError as exc:
        print(f"chatmail-fsreport: cannot write metrics: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
