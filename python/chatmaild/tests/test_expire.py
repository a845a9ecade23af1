from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chatmaild import expire
from chatmaild.config import Config
from chatmaild.expire import (
    LARGE_MESSAGE_BYTES,
    MIB,
    Cutoffs,
    Expiry,
    Reporter,
    expire_to_target,
    iter_mailbox_files,
    main,
    parse_maildir_name,
    quota_main,
    remove_tree,
    run_expire,
)

DAY = 86400
NOW = 1_800_000_000.0
DOMAIN = "chat.example.org"


def days_ago(days: float) -> float:
    return NOW - days * DAY


def touch(path: Path, *, age_days: float, size: int = 10) -> Path:
    """Create ``path`` with ``size`` bytes and an mtime ``age_days`` before NOW."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fp:
        fp.truncate(size)
    mtime = days_ago(age_days)
    os.utime(path, (mtime, mtime))
    return path


def maildir_name(age_days: float, size: int, n: int = 0) -> str:
    """A Dovecot-style file name delivered ``age_days`` before NOW."""
    return f"{int(days_ago(age_days))}.M{n}P1.host,S={size},W={size + 20}:2,S"


def make_account(config: Config, name: str = "user1", *, login_age_days: float = 1) -> Path:
    mailbox = config.mailboxes_dir / f"{name}@{DOMAIN}"
    touch(mailbox / "password", age_days=login_age_days)
    return mailbox


def quiet_reporter(dry_run: bool = False) -> Reporter:
    return Reporter(verbose=False, dry_run=dry_run, out=io.StringIO(), err=io.StringIO())


def run(config: Config, *, remove: bool = True, now: float = NOW) -> expire.ExpireStats:
    return run_expire(config, now=now, remove=remove, reporter=quiet_reporter(not remove))


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    return make_config(delete_mails_after=20, delete_large_after=7, delete_inactive_users_after=90)


def test_messages_older_than_delete_mails_after_go_in_every_maildir_folder(config: Config) -> None:
    mailbox = make_account(config)
    old = [
        touch(mailbox / sub / f"old-{sub.replace('/', '_')}", age_days=21)
        for sub in ("cur", "new", "tmp", ".DeltaChat/cur", ".DeltaChat/new")
    ]
    young = [
        touch(mailbox / sub / f"young-{sub.replace('/', '_')}", age_days=19)
        for sub in ("cur", "new", "tmp", ".DeltaChat/cur")
    ]

    stats = run(config)

    assert [p for p in old if p.exists()] == []
    assert all(p.exists() for p in young)
    assert stats.files_removed == len(old)
    assert stats.bytes_removed == 10 * len(old)


def test_large_read_messages_expire_sooner_but_unread_large_ones_stay(config: Config) -> None:
    mailbox = make_account(config)
    large = LARGE_MESSAGE_BYTES + 1
    read_large_old = touch(mailbox / "cur" / "a", age_days=8, size=large)
    folder_large_old = touch(mailbox / ".DeltaChat" / "cur" / "b", age_days=8, size=large)
    unread_large_old = touch(mailbox / "new" / "c", age_days=8, size=large)
    read_large_young = touch(mailbox / "cur" / "d", age_days=6, size=large)
    read_exactly_limit = touch(mailbox / "cur" / "e", age_days=8, size=LARGE_MESSAGE_BYTES)
    read_small_old = touch(mailbox / "cur" / "f", age_days=8, size=100)

    run(config)

    assert not read_large_old.exists()
    assert not folder_large_old.exists()
    assert unread_large_old.exists()
    assert read_large_young.exists()
    assert read_exactly_limit.exists()
    assert read_small_old.exists()


def test_password_metadata_and_dovecot_indexes_are_never_deleted(config: Config) -> None:
    mailbox = make_account(config, login_age_days=89)
    kept = [
        touch(mailbox / name, age_days=400, size=LARGE_MESSAGE_BYTES * 2)
        for name in (
            "enforceE2EEincoming",
            "dovecot.index",
            "dovecot.index.log",
            "dovecot-uidlist",
            "dovecot.list.index",
            "metadata.json",
            ".DeltaChat/dovecot.index.cache",
            ".DeltaChat/dovecot-uidlist",
        )
    ]
    kept.append(mailbox / "password")

    stats = run(config)

    assert [p for p in kept if not p.exists()] == []
    assert stats.files_removed == 0
    assert stats.accounts_removed == 0


def test_maildirsize_is_deleted_only_when_a_message_went(config: Config) -> None:
    busy = make_account(config, "busy")
    touch(busy / "maildirsize", age_days=0)
    touch(busy / "cur" / "old", age_days=30)
    idle = make_account(config, "idle")
    touch(idle / "maildirsize", age_days=0)
    touch(idle / "cur" / "young", age_days=1)

    run(config)

    assert not (busy / "maildirsize").exists()
    assert (idle / "maildirsize").exists()


def test_dry_run_deletes_nothing_and_reports_what_a_real_run_deletes(config: Config) -> None:
    make_account(config, "gone", login_age_days=100)
    touch(config.mailboxes_dir / f"gone@{DOMAIN}" / "cur" / "x", age_days=100, size=123)
    mailbox = make_account(config, "kept")
    touch(mailbox / "cur" / "old", age_days=30, size=50)
    touch(mailbox / "cur" / "young", age_days=1, size=60)
    touch(mailbox / "maildirsize", age_days=0)
    before = sorted(str(p) for p in config.mailboxes_dir.rglob("*"))

    dry = run(config, remove=False)
    after_dry = sorted(str(p) for p in config.mailboxes_dir.rglob("*"))
    real = run(config, remove=True)

    assert after_dry == before
    assert dry == real
    assert real.accounts_removed == 1
    assert real.account_files_removed == 2
    assert real.account_bytes_removed == 10 + 123
    assert real.files_removed == 1
    assert real.bytes_removed == 50


def test_main_is_a_dry_run_without_remove_and_lists_the_accounts_it_would_delete(
    config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    old = make_account(config, "old", login_age_days=91)

    assert main([str(config.path)], now=NOW) == 0

    out = capsys.readouterr().out
    assert old.exists()
    assert f"would remove account {old} (last login" in out
    assert "Would remove 1 out of 1 accounts" in out
    assert "--remove" in out


def test_inactive_accounts_are_removed_whole_and_recent_ones_keep_their_password(config: Config) -> None:
    old = [make_account(config, f"old{i:03d}", login_age_days=91 + i % 30) for i in range(150)]
    for mailbox in old[:10]:
        touch(mailbox / ".DeltaChat" / "cur" / "msg", age_days=1)
    recent = [make_account(config, f"new{i}", login_age_days=89) for i in range(5)]

    assert main([str(config.path), "--remove", "--progress-every", "0"], now=NOW) == 0

    assert [p for p in old if p.exists()] == []
    assert all((p / "password").exists() for p in recent)


def test_directory_without_password_is_removed_only_when_empty(
    config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = config.mailboxes_dir / f"empty@{DOMAIN}"
    empty.mkdir(parents=True)
    nonempty = config.mailboxes_dir / f"nonempty@{DOMAIN}"
    touch(nonempty / "cur" / "msg", age_days=300)

    assert main([str(config.path), "--remove"], now=NOW) == 0

    assert not empty.exists()
    assert (nonempty / "cur" / "msg").exists()
    assert "doesn't have last_login but isn't empty" in capsys.readouterr().out


def test_entries_without_at_sign_are_not_accounts(config: Config) -> None:
    other = touch(config.mailboxes_dir / "not-an-account" / "cur" / "old", age_days=300)

    stats = run(config)

    assert other.exists()
    assert stats.accounts_scanned == 0


def test_days_option_makes_now_that_many_days_earlier(config: Config) -> None:
    mailbox = make_account(config)
    msg = touch(mailbox / "cur" / "msg", age_days=21)

    main([str(config.path), "--remove", "--days", "2"], now=NOW)
    assert msg.exists()
    main([str(config.path), "--remove"], now=NOW)
    assert not msg.exists()


def test_maxnum_stops_after_that_many_accounts(config: Config) -> None:
    for i in range(5):
        make_account(config, f"u{i}", login_age_days=100)

    reporter = quiet_reporter()
    stats = run_expire(config, now=NOW, remove=True, reporter=reporter, maxnum=2)

    assert stats.accounts_scanned == 2
    assert len(list(config.mailboxes_dir.iterdir())) == 3


def test_progress_goes_to_stderr_every_n_accounts(config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(7):
        make_account(config, f"u{i}")

    main([str(config.path), "--progress-every", "3"], now=NOW)

    captured = capsys.readouterr()
    progress = [line for line in captured.err.splitlines() if line.startswith("expire:")]
    assert progress[0].startswith("expire: 3 accounts scanned")
    assert progress[1].startswith("expire: 6 accounts scanned")
    assert len(progress) == 2
    assert "expire:" not in captured.out


def test_missing_mailboxes_dir_is_reported_and_nothing_else_happens(
    config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(config.path), "--remove"], now=NOW) == 0

    err = capsys.readouterr().err
    assert f"no mailboxes found at: {config.mailboxes_dir}" in err
    assert not config.mailboxes_dir.exists()


class SpyEntry:
    """A directory entry as expire sees it, reporting what is asked of it."""

    def __init__(self, entry: os.DirEntry[str], spy: ScandirSpy) -> None:
        self._entry, self._spy = entry, spy
        self.name, self.path = entry.name, entry.path

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        return self._entry.is_dir(follow_symlinks=follow_symlinks)

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        result = self._entry.is_file(follow_symlinks=follow_symlinks)
        self._spy.after_is_file(self._entry)
        return result

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        self._spy.stat_calls.append(self.name)
        return self._entry.stat(follow_symlinks=follow_symlinks)


class ScandirSpy:
    """Replaces expire's os.scandir; counts stat calls and can delete a file "meanwhile"."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, vanish_after_is_file: str | None = None) -> None:
        self.stat_calls: list[str] = []
        self.vanish = vanish_after_is_file
        real_scandir = os.scandir

        @contextlib.contextmanager
        def scandir(path: str) -> Iterator[Iterator[SpyEntry]]:
            with real_scandir(path) as listing:
                yield (SpyEntry(entry, self) for entry in listing)

        monkeypatch.setattr(expire.os, "scandir", scandir)

    def after_is_file(self, entry: os.DirEntry[str]) -> None:
        if entry.name == self.vanish:
            os.unlink(entry.path)  # another process deletes it right now


def test_a_file_that_vanishes_between_listing_and_stat_is_skipped(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    mailbox = make_account(config)
    vanishing = touch(mailbox / "cur" / "vanishing", age_days=30)
    other = touch(mailbox / "cur" / "other", age_days=30)
    ScandirSpy(monkeypatch, vanish_after_is_file="vanishing")

    stats = run(config)

    assert not vanishing.exists()
    assert not other.exists()
    assert stats.files_removed == 1


def test_a_directory_removed_while_walking_ends_the_walk_of_it_quietly(tmp_path: Path) -> None:
    mailbox = tmp_path / f"user@{DOMAIN}"
    for name in ("a", "b", "c"):
        touch(mailbox / "cur" / name, age_days=0)
    touch(mailbox / "password", age_days=0)

    seen = []
    for info in iter_mailbox_files(str(mailbox)):
        seen.append(info.name)
        if info.parent == "cur":
            for leftover in (mailbox / "cur").iterdir():
                leftover.unlink()
            (mailbox / "cur").rmdir()

    assert len([n for n in seen if n in "abc"]) == 1


def test_remove_tree_counts_files_and_bytes_and_tolerates_a_gone_tree(tmp_path: Path) -> None:
    touch(tmp_path / "acct" / "password", age_days=0, size=5)
    touch(tmp_path / "acct" / ".X" / "cur" / "m", age_days=0, size=7)

    counted = remove_tree(str(tmp_path / "acct"), remove=False)
    removed = remove_tree(str(tmp_path / "acct"), remove=True)
    again = remove_tree(str(tmp_path / "acct"), remove=True)

    assert (counted.files, counted.bytes) == (2, 12)
    assert (removed.files, removed.bytes) == (2, 12)
    assert not (tmp_path / "acct").exists()
    assert (again.files, again.bytes) == (0, 0)


def test_summary_line_names_accounts_files_and_bytes(
    config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    make_account(config, "gone", login_age_days=100)
    mailbox = make_account(config, "kept")
    touch(mailbox / "new" / "m", age_days=25, size=40)

    main([str(config.path), "--remove"], now=NOW)

    out = capsys.readouterr().out
    assert "Removed 1 out of 2 accounts (1 files, 10 bytes)" in out
    assert "and 1 out of 2 files (40 bytes, 0 of them to meet the quota) in 1 remaining accounts" in out


def test_verbose_lists_each_file_with_its_day(config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    mailbox = make_account(config)
    msg = touch(mailbox / "cur" / "m", age_days=30)

    main([str(config.path), "-v", "--remove"], now=NOW)

    assert f"removing Dec 16        10 {msg}" in capsys.readouterr().out


def test_invalid_config_is_named_in_the_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.ini"

    with pytest.raises(SystemExit):
        main([str(missing)])

    assert str(missing) in capsys.readouterr().err


# --- quota trimming ------------------------------------------------------


def test_maildir_names_give_delivery_time_and_logical_size() -> None:
    assert parse_maildir_name("1700000000.M1P2.host,S=1234,W=1260:2,S") == (1700000000, 1234)
    assert parse_maildir_name("1700000000.M1P2.host,W=1260,S=99:2,") == (1700000000, 99)
    assert parse_maildir_name("1700000000.M1P2.host:2,S") is None
    assert parse_maildir_name("dovecot.index") is None


def test_expire_to_target_removes_oldest_first_and_spares_messages_younger_than_a_day(
    tmp_path: Path,
) -> None:
    mailbox = tmp_path / "mbox"
    paths = [
        touch(mailbox / sub / maildir_name(age, MIB, n), age_days=age, size=MIB)
        for n, (sub, age) in enumerate((("cur", 10), ("new", 5), ("cur", 0)))
    ]

    removed = expire_to_target(mailbox, MIB, now=NOW)

    assert removed.files == 2
    assert removed.bytes == 2 * MIB
    assert [p.exists() for p in paths] == [False, False, True]


def test_expire_to_target_stops_at_the_target(tmp_path: Path) -> None:
    mailbox = tmp_path / "mbox"
    paths = [touch(mailbox / "cur" / maildir_name(age, MIB, age), age_days=age) for age in (9, 8, 7, 6)]

    removed = expire_to_target(mailbox, 2 * MIB, now=NOW)

    assert removed.files == 2
    assert [p.exists() for p in paths] == [False, False, True, True]


def test_expire_to_target_ignores_files_without_size_in_their_name(tmp_path: Path) -> None:
    mailbox = tmp_path / "mbox"
    unnamed = touch(mailbox / "cur" / f"{int(days_ago(30))}.M1P1.host:2,S", age_days=30, size=5 * MIB)
    elsewhere = touch(mailbox / ".X" / "cur" / maildir_name(30, 5 * MIB), age_days=30)

    removed = expire_to_target(mailbox, 0, now=NOW)

    assert removed.files == 0
    assert unnamed.exists()
    assert elsewhere.exists()


def test_daily_run_trims_a_mailbox_to_seventy_percent_of_its_quota(
    make_config: Callable[..., Config],
) -> None:
    config = make_config(max_mailbox_size="2M")
    mailbox = make_account(config)
    touch(mailbox / "maildirsize", age_days=0)
    paths = [
        touch(mailbox / "new" / maildir_name(age, MIB, age), age_days=age, size=10) for age in (3, 2, 0.1)
    ]

    stats = run(config)

    assert [p.exists() for p in paths] == [False, False, True]
    assert stats.quota_files_removed == 2
    assert not (mailbox / "maildirsize").exists()


def test_dry_run_quota_trim_does_not_count_messages_already_expired(
    make_config: Callable[..., Config],
) -> None:
    config = make_config(max_mailbox_size="2M")
    mailbox = make_account(config)
    for age in (30, 3, 2, 0.1):
        touch(mailbox / "new" / maildir_name(age, MIB, int(age)), age_days=age)

    dry = run(config, remove=False)
    real = run(config, remove=True)

    assert dry == real
    assert real.files_removed == 3
    assert real.quota_files_removed == 2


def test_quota_hook_removes_the_oldest_message_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mailbox = tmp_path / f"user@{DOMAIN}"
    msg = touch(mailbox / "cur" / maildir_name(2, 2 * MIB), age_days=2, size=100)
    touch(mailbox / "maildirsize", age_days=0)

    assert quota_main(["1", str(mailbox)], now=NOW) == 0

    assert not msg.exists()
    assert not (mailbox / "maildirsize").exists()
    assert f"quota-expire: removed 1 message(s) from user@{DOMAIN}" in capsys.readouterr().err


def test_quota_hook_is_silent_when_nothing_needs_removing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mailbox = tmp_path / f"user@{DOMAIN}"
    msg = touch(mailbox / "cur" / maildir_name(2, MIB), age_days=2)
    touch(mailbox / "maildirsize", age_days=0)

    assert quota_main(["1", str(mailbox)], now=NOW) == 0

    assert msg.exists()
    assert (mailbox / "maildirsize").exists()
    assert capsys.readouterr().err == ""


def test_quota_hook_names_a_missing_mailbox_and_a_bad_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert quota_main(["350", str(tmp_path / "nobody")]) == 1
    assert str(tmp_path / "nobody") in capsys.readouterr().err

    with pytest.raises(SystemExit):
        quota_main(["lots", str(tmp_path)])
    assert "'lots' is not a whole number" in capsys.readouterr().err


def test_cutoffs_follow_the_config(config: Config) -> None:
    cutoffs = Cutoffs.from_config(config, NOW)

    assert cutoffs.mails == days_ago(20)
    assert cutoffs.large == days_ago(7)
    assert cutoffs.inactive == days_ago(90)
    assert cutoffs.quota_target_bytes == int(500 * MIB * 0.7)


def test_dovecot_message_names_give_age_and_size_without_a_stat(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    mailbox = make_account(config)
    # The mtimes say "new and tiny"; the names, which Dovecot wrote on delivery, decide.
    old = touch(mailbox / "cur" / maildir_name(21, 300, 1), age_days=0, size=1)
    young = touch(mailbox / "new" / maildir_name(19, 300, 2), age_days=0, size=1)
    large_read = touch(mailbox / "cur" / maildir_name(8, LARGE_MESSAGE_BYTES + 1, 3), age_days=0, size=1)
    large_unread = touch(mailbox / "new" / maildir_name(8, LARGE_MESSAGE_BYTES + 1, 4), age_days=0, size=1)
    spy = ScandirSpy(monkeypatch)

    stats = run(config)

    assert not old.exists() and not large_read.exists()
    assert young.exists() and large_unread.exists()
    assert stats.files_removed == 2
    assert stats.bytes_removed == 300 + LARGE_MESSAGE_BYTES + 1  # the S= sizes
    # No file is stat-ed while walking: the names carry time and size, and account data
    # (password, index files) is only counted.
    assert spy.stat_calls == []


def test_message_names_without_size_fall_back_to_stat(config: Config) -> None:
    mailbox = make_account(config)
    # Dovecot names without S= (other delivery agents, old files) and names that are not Dovecot's.
    no_size_old = touch(mailbox / "cur" / f"{int(days_ago(0))}.M1P1.host:2,S", age_days=21, size=7)
    no_size_young = touch(mailbox / "cur" / f"{int(days_ago(30))}.M2P1.host:2,S", age_days=1, size=7)
    foreign_old = touch(mailbox / "new" / "message-from-elsewhere", age_days=21, size=5)

    stats = run(config)

    assert not no_size_old.exists() and not foreign_old.exists()
    assert no_size_young.exists()
    assert stats.files_removed == 2
    assert stats.bytes_removed == 7 + 5


def test_a_named_message_that_vanishes_before_its_deletion_is_not_counted(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    mailbox = make_account(config)
    vanishing = touch(mailbox / "cur" / maildir_name(30, 100, 1), age_days=30)
    real_scandir = os.scandir

    @contextlib.contextmanager
    def listed_then_vanished(path: str) -> Iterator[Iterator[os.DirEntry[str]]]:
        def entries() -> Iterator[os.DirEntry[str]]:
            with real_scandir(path) as listing:
                for entry in listing:
                    if entry.name == vanishing.name:
                        os.unlink(entry.path)  # Dovecot deletes it right after we listed it
                    yield entry

        yield entries()

    monkeypatch.setattr(expire.os, "scandir", listed_then_vanished)
    stats = run(config)

    assert stats.files_removed == 0


def test_inactive_account_removal_counts_named_messages_by_their_size(config: Config) -> None:
    mailbox = make_account(config, login_age_days=100)
    touch(mailbox / "cur" / maildir_name(5, 1000, 1), age_days=5, size=3)
    touch(mailbox / "new" / "unnamed", age_days=5, size=4)

    stats = run(config)

    assert not mailbox.exists()
    assert stats.account_files_removed == 3  # password, two messages
    assert stats.account_bytes_removed == 10 + 1000 + 4


def test_expiry_handles_one_mailbox_at_a_time(config: Config) -> None:
    mailbox = make_account(config)
    touch(mailbox / "cur" / "old", age_days=30)
    expiry = Expiry(Cutoffs.from_config(config, NOW), remove=True, reporter=quiet_reporter())

    expiry.process_mailbox(str(mailbox))

    assert expiry.stats.accounts_scanned == 1
    assert expiry.stats.files_removed == 1
    assert expiry.stats.files_scanned == 2


def test_deletions_run_in_a_pool_while_later_accounts_are_scanned_and_every_one_is_counted(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each unlink waits for the disk; deleting in a few threads overlaps those waits.
    More accounts than are kept in flight, so the window is drained along the way."""
    import threading

    accounts = expire.MAX_PENDING_ACCOUNTS * 2 + 3
    for i in range(accounts):
        mailbox = make_account(config, f"user{i:04d}")
        touch(mailbox / "cur" / maildir_name(30, 100, 1), age_days=30)
        touch(mailbox / "new" / maildir_name(25, 50, 2), age_days=25)
        touch(mailbox / "cur" / maildir_name(3, 70, 3), age_days=3)
        touch(mailbox / "maildirsize", age_days=0)
    gone = make_account(config, "inactive", login_age_days=100)
    touch(gone / "cur" / maildir_name(30, 100, 1), age_days=30)
    kept = make_account(config, "untouched")
    touch(kept / "cur" / maildir_name(3, 70, 1), age_days=3)
    touch(kept / "maildirsize", age_days=0)
    threads: set[str] = set()
    real_unlink = os.unlink

    def unlink(path: str, *, dir_fd: int | None = None) -> None:
        threads.add(threading.current_thread().name)
        real_unlink(path, dir_fd=dir_fd)

    monkeypatch.setattr(expire.os, "unlink", unlink)
    stats = run(config)

    assert threads and all(name.startswith("expire") for name in threads), threads
    assert (stats.files_removed, stats.bytes_removed) == (2 * accounts, 150 * accounts)
    assert (stats.accounts_removed, stats.account_files_removed) == (1, 2)
    assert not gone.exists()
    for i in range(accounts):
        mailbox = config.mailboxes_dir / f"user{i:04d}@{DOMAIN}"
        left = sorted(p.name for p in mailbox.rglob("*") if p.is_file())
        assert left == sorted(["password", maildir_name(3, 70, 3)])
    assert (kept / "maildirsize").exists(), "nothing went, so Dovecot's quota count stays"


def test_a_dry_run_deletes_nothing_and_starts_no_threads(config: Config) -> None:
    import threading

    mailbox = make_account(config)
    old = touch(mailbox / "cur" / maildir_name(30, 100, 1), age_days=30)
    before = threading.active_count()
    stats = run(config, remove=False)
    assert old.exists() and stats.files_removed == 1
    assert threading.active_count() == before


def test_only_regular_files_count_as_messages_whatever_their_names_say(
    config: Config, tmp_path: Path
) -> None:
    """Names are matched in bulk; the listing still decides what is a file. A directory or a
    symbolic link named like an old message is no message, and a name with a newline in it
    is one name, not two."""
    mailbox = make_account(config)
    outside = touch(tmp_path / "outside", age_days=0)
    (mailbox / "cur").mkdir(parents=True)
    os.symlink(outside, mailbox / "cur" / maildir_name(30, 100, 1))
    folder = mailbox / "cur" / maildir_name(30, 100, 2)
    inside = touch(folder / "note", age_days=30)  # in a directory named "...", not in cur/new/tmp
    two_lines = touch(mailbox / "new" / (maildir_name(30, 7, 3) + "\n" + maildir_name(30, 9, 4)), age_days=30)
    real = touch(mailbox / "new" / maildir_name(30, 5, 5), age_days=30)

    stats = run(config)

    assert (mailbox / "cur" / maildir_name(30, 100, 1)).is_symlink() and outside.exists()
    assert inside.exists()
    assert not two_lines.exists() and not real.exists()
    assert (stats.files_removed, stats.bytes_removed) == (2, 7 + 5)


# --- worker processes ----------------------------------------------------


def make_mixed_relay(config: Config, accounts: int = 12) -> None:
    """Accounts of every kind: inactive, active with old, young, large and unnamed messages,
    a folder, an empty directory and one without password that is not empty."""
    for i in range(accounts):
        mailbox = make_account(config, f"user{i:03d}", login_age_days=100 if i % 5 == 0 else 1)
        touch(mailbox / "cur" / maildir_name(30, 100, 1), age_days=30)
        touch(mailbox / "cur" / maildir_name(3, 70, 2), age_days=3)
        touch(mailbox / "cur" / maildir_name(8, LARGE_MESSAGE_BYTES + 1, 3), age_days=8)
        touch(mailbox / "new" / maildir_name(25, 50, 4), age_days=25)
        touch(mailbox / ".DeltaChat" / "cur" / maildir_name(21, 40, 5), age_days=21)
        touch(mailbox / "tmp" / "unnamed", age_days=22, size=33)
        touch(mailbox / "maildirsize", age_days=0)
    (config.mailboxes_dir / f"empty@{DOMAIN}").mkdir()
    touch(config.mailboxes_dir / f"stray@{DOMAIN}" / "cur" / "m", age_days=300)


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], str]:
    """Exit code, stdout lines without the summary's duration, and stderr of one main() run."""
    code = main(args, now=NOW)
    captured = capsys.readouterr()
    lines = [line.split(", in ")[0] if " seconds" in line else line for line in captured.out.splitlines()]
    return code, lines, captured.err


def test_worker_processes_list_and_count_exactly_what_one_process_does(
    config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    make_mixed_relay(config)
    base = [str(config.path), "-v", "--progress-every", "0"]

    one = run_main(base + ["--jobs", "1"], capsys)
    three = run_main(base + ["--jobs", "3"], capsys)

    assert one[0] == three[0] == 0
    assert sorted(three[1]) == sorted(one[1])  # the same lines, in any order
    summary = [line for line in one[1] if line.startswith("Would remove ")]
    assert summary[0].startswith("Would remove 3 out of 14 accounts (24 files, ")
    assert "and 45 out of 72 files" in summary[0]
    assert summary[1].startswith("Would remove 1 empty directories without a password; skipped 1")
    # 3 inactive accounts, 5 messages in each of 9 others, the empty directory
    assert sum(line.startswith("would remove ") for line in one[1]) == 3 + 9 * 5 + 1


def test_worker_processes_remove_what_the_dry_run_listed(
    config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    make_mixed_relay(config)
    _, dry, _ = run_main([str(config.path), "-v", "--jobs", "1"], capsys)

    code, real, _ = run_main([str(config.path), "-v", "--remove", "--jobs", "3"], capsys)

    assert code == 0
    listed = [line.replace("would remove", "removing") for line in dry if line.startswith("would remove ")]
    assert sorted(listed) == sorted(line for line in real if line.startswith("removing "))
    assert any(line.startswith("Removed 3 out of 14 accounts (24 files, ") for line in real)
    left = sorted(p.relative_to(config.mailboxes_dir).as_posix() for p in config.mailboxes_dir.rglob("*")
                  if p.is_file())
    assert left == sorted(
        [f"user{i:03d}@{DOMAIN}/{name}" for i in range(12) if i % 5
         for name in ("password", f"cur/{maildir_name(3, 70, 2)}")]
        + [f"stray@{DOMAIN}/cur/m"]
    )


def test_each_account_is_handled_once_by_one_of_several_processes(
    config: Config, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for i in range(20):
        make_account(config, f"u{i:02d}")
    seen = tmp_path / "seen"
    real = Expiry.process_mailbox

    def process_mailbox(self: Expiry, mailbox: str) -> None:
        with open(seen, "a") as fp:  # O_APPEND: whole lines from every process
            fp.write(f"{os.getpid()} {os.path.basename(mailbox)}\n")
        real(self, mailbox)

    monkeypatch.setattr(Expiry, "process_mailbox", process_mailbox)
    stats = run_expire(config, now=NOW, remove=True, reporter=quiet_reporter(), jobs=3)

    handled = [line.split() for line in seen.read_text().splitlines()]
    assert sorted(name for _, name in handled) == sorted(f"u{i:02d}@{DOMAIN}" for i in range(20))
    pids = {pid for pid, _ in handled}
    assert len(pids) == 3 and str(os.getpid()) in pids  # this process is one of the workers
    assert stats.accounts_scanned == 20


@pytest.mark.parametrize("how", ["exits", "raises", "is killed"])
def test_a_failing_worker_makes_the_job_fail_loudly_and_never_report_success(
    config: Config, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    import signal

    for i in range(10):
        make_account(config, f"u{i}")
    real = Expiry.process_mailbox
    test_process = os.getpid()

    def process_mailbox(self: Expiry, mailbox: str) -> None:
        if os.getpid() != test_process:  # a forked worker, at its first account
            if how == "exits":
                os._exit(3)
            if how == "raises":
                raise RuntimeError("disk on fire")
            os.kill(os.getpid(), signal.SIGKILL)
        real(self, mailbox)

    monkeypatch.setattr(Expiry, "process_mailbox", process_mailbox)
    code, out, err = run_main([str(config.path), "--remove", "--jobs", "2"], capsys)

    assert code == 1
    assert "FAILED" in err and "incomplete" in err
    assert not any(line.startswith("Removed") for line in out)


def test_progress_with_worker_processes_counts_every_account_once(
    config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(7):
        make_account(config, f"u{i}")

    main([str(config.path), "--progress-every", "3", "--jobs", "3"], now=NOW)

    captured = capsys.readouterr()
    progress = [line for line in captured.err.splitlines() if line.startswith("expire:")]
    assert [line.split(" accounts")[0] for line in progress] == ["expire: 3", "expire: 6"]
    assert "expire:" not in captured.out


def test_maxnum_counts_across_all_accounts_even_when_jobs_are_asked_for(config: Config) -> None:
    for i in range(5):
        make_account(config, f"u{i}", login_age_days=100)

    stats = run_expire(config, now=NOW, remove=True, reporter=quiet_reporter(), maxnum=2, jobs=3)

    assert stats.accounts_scanned == 2
    assert len(list(config.mailboxes_dir.iterdir())) == 3


def test_jobs_default_to_the_usable_cpus_at_most_four_and_must_be_positive(
    config: Config, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(expire.os, "sched_getaffinity", lambda pid: set(range(64)))
    assert expire.default_jobs() == expire.MAX_JOBS == 4
    monkeypatch.setattr(expire.os, "sched_getaffinity", lambda pid: {0})
    assert expire.default_jobs() == 1

    with pytest.raises(SystemExit):
        main([str(config.path), "--jobs", "0"])
    assert "'0' is not at least 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name",
    [
        "1700000000.M1P2.host,S=1234,W=1260:2,S",
        "1700000000.M1P2.host,W=1260,S=99:2,",
        "1700000000.M1P2.host:2,S",
        "1700000000.a,S=x,S=5,W=3:2,",
        "1700000000.a,,S=5",
        "1700000000.a\n,S=5",
        "1700000000.a,S=5\nrest",
        "170.a,b,c,S=0",
        "x1700000000.a,S=5",
        "dovecot.index",
    ],
)
def test_bulk_name_matching_agrees_with_the_single_name_parser(name: str) -> None:
    names = ["1.a,S=1", name, "2.b,S=2"]
    found = expire._MAILDIR_NAMES("\0".join(names))
    parsed = parse_maildir_name(name)
    expected = [("1.a,S=1", "1", "1")]
    if parsed is not None:
        expected.append((name, str(parsed[0]), str(parsed[1])))
    expected.append(("2.b,S=2", "2", "2"))
    assert found == expected


def test_deletion_never_follows_a_message_directory_replaced_by_a_symbolic_link(tmp_path: Path) -> None:
    """Between the scan and the deletion, cur/ became a link to elsewhere: nothing there goes."""
    mailbox = tmp_path / f"user@{DOMAIN}"
    outside = touch(tmp_path / "elsewhere" / "m", age_days=30)
    kept = touch(mailbox / "new" / "k", age_days=30)
    mailbox.joinpath("cur").symlink_to(tmp_path / "elsewhere")

    done = expire._unlink_all(str(mailbox), [str(mailbox / "cur" / "m"), str(mailbox / "new" / "k")],
                              forget_quota=False)

    assert done == [False, True]
    assert outside.exists() and not kept.exists()


def test_worker_processes_share_the_deleting_threads(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many more unlinks in flight than REMOVE_WORKERS only contend in the kernel."""
    import concurrent.futures

    sizes: list[int] = []
    real = concurrent.futures.ThreadPoolExecutor

    def pool(max_workers: int, **kwargs: str) -> concurrent.futures.ThreadPoolExecutor:
        sizes.append(max_workers)
        return real(max_workers, **kwargs)

    monkeypatch.setattr(concurrent.futures, "ThreadPoolExecutor", pool)
    make_account(config)
    run_expire(config, now=NOW, remove=True, reporter=quiet_reporter(), jobs=2)  # this process: worker 1
    run_expire(config, now=NOW, remove=True, reporter=quiet_reporter(), jobs=16)
    run_expire(config, now=NOW, remove=True, reporter=quiet_reporter())

    assert sizes == [expire.REMOVE_WORKERS // 2, expire.MIN_REMOVE_WORKERS, expire.REMOVE_WORKERS]
