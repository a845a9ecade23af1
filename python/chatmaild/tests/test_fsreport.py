from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from chatmaild.config import Config
from chatmaild.fsreport import (
    ACTIVE_DAYS,
    KIB,
    MIB,
    SIZE_THRESHOLDS,
    TEXTFILE_NAME,
    collect,
    human_size,
    main,
)

DAY = 86400
NOW = 1_800_000_000.0
DOMAIN = "chat.example.org"


def touch(path: Path, *, age_days: float = 0, size: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fp:
        fp.truncate(size)
    mtime = NOW - age_days * DAY
    os.utime(path, (mtime, mtime))
    return path


def account(config: Config, name: str, login_age_days: float) -> Path:
    mailbox = config.mailboxes_dir / f"{name}@{DOMAIN}"
    touch(mailbox / "password", age_days=login_age_days, size=100)
    return mailbox


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    return make_config()


def test_accounts_are_counted_by_kind_and_by_last_login(config: Config) -> None:
    for i, age in enumerate((0.5, 5, 9, 29, 39, 79, 99, 149, 200)):
        account(config, f"user{i}", age)
    account(config, "ci-test1", 0.5)
    account(config, "ci-test2", 300)
    (config.mailboxes_dir / f"nopassword@{DOMAIN}" / "cur").mkdir(parents=True)

    report = collect(config.mailboxes_dir, now=NOW)

    assert (report.accounts, report.ci_accounts, report.user_accounts) == (11, 2, 9)
    assert report.active == {1: 1, 7: 2, 10: 3, 30: 4, 40: 5, 80: 6, 100: 7, 150: 8}
    assert set(report.active) == set(ACTIVE_DAYS)


def test_storage_is_split_into_messages_and_other_files(config: Config) -> None:
    mailbox = account(config, "user1", 1)
    touch(mailbox / "cur" / "a", size=1000)
    touch(mailbox / ".DeltaChat" / "new" / "b", size=2000)
    touch(mailbox / "dovecot.index", size=300)
    touch(mailbox / ".DeltaChat" / "dovecot-uidlist", size=40)

    report = collect(config.mailboxes_dir, now=NOW)

    assert report.message_bytes == 3000
    assert report.extra_bytes == 100 + 300 + 40


def test_message_sizes_are_counted_at_or_above_each_threshold(config: Config) -> None:
    mailbox = account(config, "user1", 1)
    sizes = [10, 100 * KIB, 600 * KIB, 3 * MIB, 12 * MIB]
    for i, size in enumerate(sizes):
        touch(mailbox / "cur" / f"m{i}", size=size)

    report = collect(config.mailboxes_dir, now=NOW)

    assert SIZE_THRESHOLDS == (0, 100 * KIB, 512 * KIB, MIB, 2 * MIB, 5 * MIB, 10 * MIB)
    expected_counts = [5, 4, 3, 2, 2, 1, 1]
    assert [report.size_count[t] for t in SIZE_THRESHOLDS] == expected_counts
    assert report.size_bytes[0] == sum(sizes)
    assert report.size_bytes[MIB] == 15 * MIB


def test_mdir_limits_size_counts_to_one_maildir_subdirectory(config: Config) -> None:
    mailbox = account(config, "user1", 1)
    touch(mailbox / "cur" / "read", size=500)
    touch(mailbox / "new" / "unread", size=600)

    only_cur = collect(config.mailboxes_dir, now=NOW, mdir="cur")
    only_new = collect(config.mailboxes_dir, now=NOW, mdir="new")

    assert (only_cur.size_count[0], only_cur.size_bytes[0]) == (1, 500)
    assert (only_new.size_count[0], only_new.size_bytes[0]) == (1, 600)
    assert only_cur.message_bytes == only_new.message_bytes == 1100


def test_min_login_age_limits_size_counts_to_long_absent_accounts(config: Config) -> None:
    touch(account(config, "recent", 2) / "cur" / "m", size=700)
    touch(account(config, "absent", 40) / "cur" / "m", size=900)

    report = collect(config.mailboxes_dir, now=NOW, min_login_age_days=30)

    assert report.size_bytes[0] == 900
    assert report.message_bytes == 1600


def test_progress_is_printed_every_n_directories(config: Config) -> None:
    for i in range(5):
        account(config, f"u{i}", 1)
    err = io.StringIO()

    collect(config.mailboxes_dir, now=NOW, progress_every=2, err=err)

    assert [line.split(",")[0] for line in err.getvalue().splitlines()] == [
        "fsreport: 2 directories scanned",
        "fsreport: 4 directories scanned",
    ]


def test_human_sizes_use_decimal_units() -> None:
    assert [human_size(n) for n in (999, 1000, 1_500_000, 2_000_000_000)] == ["999", "1.0K", "1.5M", "2.0G"]


def test_cli_prints_the_report_and_writes_prometheus_gauges(
    config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    touch(account(config, "user1", 3) / "cur" / "m", size=200 * KIB)
    account(config, "ci-bot", 3)
    textdir = tmp_path / "textfiles"
    textdir.mkdir()

    assert main([str(config.path), "--textfile", str(textdir), "--progress-every", "0"], now=NOW) == 0

    out = capsys.readouterr().out
    assert "accounts: 2 (ci: 1, users: 1)" in out
    assert "users active within: 1d 0, 7d 1," in out
    assert ">= 100KiB:          1 messages,  204.8K" in out
    prom = textdir / TEXTFILE_NAME
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644
    lines = prom.read_text().splitlines()
    assert 'chatmail_storage_bytes{kind="messages"} 204800' in lines
    assert 'chatmail_messages_count{min_size="102400"} 1' in lines
    assert 'chatmail_accounts{kind="ci"} 1' in lines
    assert 'chatmail_accounts_active{days="7"} 1' in lines
    assert "# TYPE chatmail_accounts gauge" in lines
    assert [p.name for p in textdir.iterdir()] == [TEXTFILE_NAME]


def test_cli_options_combine(config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    touch(account(config, "user1", 50) / "new" / "m", size=600)
    touch(config.mailboxes_dir / f"user1@{DOMAIN}" / "cur" / "m", size=500)
    legacy = tmp_path / "metrics"

    main(
        [
            str(config.path),
            "--mdir",
            "new",
            "--min-login-age",
            "40",
            "--maxnum",
            "5",
            "--legacy-metrics",
            str(legacy),
            "--days",
            "1",
        ],
        now=NOW,
    )

    out = capsys.readouterr().out
    assert "messages by size (accounts without login for 40+ days, only in new/):" in out
    assert ">=      0:          1 messages,     600" in out
    assert legacy.read_text() == (
        "# TYPE accounts gauge\naccounts 1\n# TYPE ci_accounts gauge\nci_accounts 0\n"
        "# TYPE nonci_accounts gauge\nnonci_accounts 1\n"
    )


def test_cli_rejects_an_unknown_mdir(config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([str(config.path), "--mdir", "Trash"])

    assert "invalid choice: 'Trash'" in capsys.readouterr().err


def test_cli_reports_a_missing_mailboxes_dir(config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(config.path)], now=NOW) == 0

    captured = capsys.readouterr()
    assert f"no mailboxes found at: {config.mailboxes_dir}" in captured.err
    assert "accounts: 0 (ci: 0, users: 0)" in captured.out
