"""`chatmail accounts` on a temporary mail directory, and the blocklist doveauth honours."""

from __future__ import annotations

import asyncio
import io
import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from chatmaild import admin
from chatmaild.blocklist import Blocklist, parse
from chatmaild.config import Config
from chatmaild.doveauth import ALLOWED, AccountStore

HASH = "{SHA512-CRYPT}$6$saltsalt$secretpasswordhashvalue"
ALICE = "alice0001@chat.example.org"
BOB = "bob000001@chat.example.org"
DAY = 86400


@pytest.fixture
def relay(make_config: Callable[..., Config], tmp_path: Path) -> Config:
    config = make_config(blocklist_file=tmp_path / "state" / "blocklist")
    for addr, size, last_login in [(ALICE, 3000, 1_700_000_000), (BOB, 120_000, 1_760_000_000)]:
        mailbox = config.mailboxes_dir / addr
        for sub in ("cur", "new", "tmp"):
            (mailbox / sub).mkdir(parents=True)
        (mailbox / "cur" / f"{last_login}.M1P2.host,S={size}:2,S").write_bytes(b"m" * size)
        (mailbox / "new" / f"{last_login}.M3P4.host,S=10").write_bytes(b"n" * 10)
        (mailbox / "dovecot.index").write_bytes(b"i" * 999)  # not mail: not counted
        (mailbox / "password").write_text(HASH)
        os.utime(mailbox / "password", (last_login, last_login))
    # A directory without a password file is not an account.
    (config.mailboxes_dir / "leftover@chat.example.org").mkdir()
    return config


class Tty(io.StringIO):
    """Standard input of an operator at a terminal."""

    def isatty(self) -> bool:
        return True


def run(config: Config, *args: str, stdin: io.StringIO | None = None) -> tuple[int, str]:
    out = io.StringIO()
    code = admin.main(
        ["--config", str(config.path), "accounts", *args],
        out=out,
        stdin=stdin or io.StringIO(),
        syslog_address=None,
    )
    return code, out.getvalue()


def login(config: Config, addr: str, password: str = "correct-horse-battery") -> str | None:
    """What doveauth answers Dovecot's passdb for this login."""
    store = AccountStore(config, resource_gate=lambda _: ALLOWED)  # the host's load is not under test
    return asyncio.run(store.login(addr, password))


# --- list ----------------------------------------------------------------------


def test_list_shows_each_account_with_last_login_day_and_mail_stored(relay: Config) -> None:
    code, out = run(relay, "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["address", "last", "login", "mail"]
    assert [line.split() for line in lines[1:]] == [
        [ALICE, "2023-11-14", "3.0KB"],
        [BOB, "2025-10-09", "120.0KB"],
    ]


def test_count_prints_only_the_number_of_accounts(relay: Config) -> None:
    assert run(relay, "list", "--count") == (0, "2\n")


# --- delete --------------------------------------------------------------------


def test_delete_removes_the_account_with_all_its_data_and_logs_no_private_data(
    relay: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(relay, "delete", ALICE, "--yes")
    assert code == 0
    assert not (relay.mailboxes_dir / ALICE).exists()
    assert (relay.mailboxes_dir / BOB / "password").exists()
    assert out == f"{ALICE} deleted (4 files)\n"
    # chatmail's log goes to stderr (and the system log, which this test leaves alone).
    log = capsys.readouterr().err
    assert log == f"INFO chatmaild.accounts: deleted account {ALICE} (4 files)\n"
    assert run(relay, "list", "--count") == (0, "1\n")


def test_delete_asks_at_a_terminal_and_keeps_the_account_on_no(relay: Config) -> None:
    code, out = run(relay, "delete", ALICE, stdin=Tty("n\n"))
    assert code == 1
    assert out == f"Delete {ALICE} and all its mail? [y/N] nothing deleted\n"
    assert (relay.mailboxes_dir / ALICE / "password").exists()
    code, _ = run(relay, "delete", ALICE, stdin=Tty("y\n"))
    assert code == 0 and not (relay.mailboxes_dir / ALICE).exists()


def test_delete_without_yes_off_a_terminal_is_refused(
    relay: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = run(relay, "delete", ALICE)
    assert code == 2
    assert "add --yes" in capsys.readouterr().err
    assert (relay.mailboxes_dir / ALICE / "password").exists()


def test_deleting_an_account_that_does_not_exist_fails_with_1(
    relay: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = run(relay, "delete", "nobody001@chat.example.org", "--yes")
    assert code == 1
    assert "no account nobody001@chat.example.org" in capsys.readouterr().err


@pytest.mark.parametrize("addr", ["alice0001@other.example", "no-at-sign", "../x/y@chat.example.org"])
def test_an_address_of_another_relay_or_a_path_is_a_usage_error(
    relay: Config, addr: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = run(relay, "delete", addr, "--yes")
    assert code == 2
    assert capsys.readouterr().err.startswith("chatmail accounts: ")
    assert run(relay, "list", "--count") == (0, "2\n")


# --- block ---------------------------------------------------------------------


def test_a_deleted_account_is_created_again_by_its_next_login(relay: Config) -> None:
    run(relay, "delete", ALICE, "--yes")
    assert login(relay, ALICE) is not None
    assert (relay.mailboxes_dir / ALICE / "password").exists()


def test_block_deletes_the_account_and_doveauth_refuses_to_create_it_again(
    relay: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(relay, "block", "Alice0001@chat.example.org", "--yes")
    assert code == 0
    assert out == "Alice0001@chat.example.org blocked, 4 files deleted\n"
    assert capsys.readouterr().err.splitlines() == [
        f"INFO chatmaild.accounts: blocked address {ALICE}",
        f"INFO chatmaild.accounts: deleted account {ALICE} (4 files)",
    ]
    assert not (relay.mailboxes_dir / ALICE).exists()
    assert ALICE in parse(relay.blocklist_file.read_text())
    assert oct(relay.blocklist_file.stat().st_mode & 0o777) == "0o644"
    assert login(relay, ALICE) is None
    assert not (relay.mailboxes_dir / ALICE / "password").exists()
    assert f"login refused: {ALICE} is blocked" in capsys.readouterr().err
    assert login(relay, BOB) == HASH


def test_blocking_an_address_without_an_account_keeps_it_from_being_created(relay: Config) -> None:
    addr = "carol0001@chat.example.org"
    assert run(relay, "block", addr, "--yes") == (0, f"{addr} blocked, 0 files deleted\n")
    assert login(relay, addr) is None
    assert run(relay, "block", addr, "--yes") == (0, f"{addr} was already blocked, 0 files deleted\n")


def test_a_blocked_address_that_still_has_an_account_cannot_log_in(relay: Config) -> None:
    Blocklist(relay.blocklist_file).add(BOB)
    assert login(relay, BOB) is None
    assert (relay.mailboxes_dir / BOB / "password").exists()


def test_unblock_lets_the_next_login_create_a_new_account(relay: Config) -> None:
    run(relay, "block", ALICE, "--yes")
    assert run(relay, "unblock", ALICE) == (0, f"{ALICE} unblocked\n")
    assert run(relay, "unblock", ALICE) == (0, f"{ALICE} was not blocked\n")
    assert login(relay, ALICE) is not None


def test_an_unreadable_blocklist_keeps_existing_accounts_but_creates_none(
    relay: Config, caplog: pytest.LogCaptureFixture
) -> None:
    relay.blocklist_file.mkdir(parents=True)  # exists, but cannot be read as a file
    assert login(relay, BOB) == HASH
    assert login(relay, "dave00001@chat.example.org") is None
    assert not (relay.mailboxes_dir / "dave00001@chat.example.org").exists()
    assert "cannot read the blocklist" in caplog.text


def test_blocklist_file_keeps_comments_and_other_lines_when_changed(tmp_path: Path) -> None:
    path = tmp_path / "blocklist"
    path.write_text("# spam wave of March\nX@chat.example.org  # reported\n")
    blocklist = Blocklist(path)
    assert blocklist.contains("x@chat.example.org")
    assert blocklist.add("y@chat.example.org")
    assert blocklist.remove("x@chat.example.org")
    assert path.read_text() == "# spam wave of March\ny@chat.example.org\n"
    assert blocklist.entries() == frozenset({"y@chat.example.org"})


def test_blocklist_is_read_again_after_another_process_changed_it(tmp_path: Path) -> None:
    path = tmp_path / "blocklist"
    reader = Blocklist(path)
    assert not reader.contains("x@chat.example.org")
    Blocklist(path).add("x@chat.example.org")
    assert reader.contains("x@chat.example.org")


# --- help ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["dns"],
        ["status"],
        ["accounts"],
        ["accounts", "list"],
        ["accounts", "delete"],
        ["accounts", "block"],
        ["accounts", "unblock"],
    ],
)
def test_every_subcommand_has_help(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        admin.main([*args, "--help"], syslog_address=None)
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: chatmail")


def test_a_missing_subcommand_and_a_missing_config_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        admin.main([], syslog_address=None)
    assert exit_info.value.code == 2
    code = admin.main(["--config", str(tmp_path / "absent.ini"), "accounts", "list"], syslog_address=None)
    assert code == 2
    assert "absent.ini: configuration file not found" in capsys.readouterr().err


def test_config_may_also_follow_the_subcommand(relay: Config) -> None:
    out = io.StringIO()
    code = admin.main(
        ["accounts", "list", "--count", "--config", str(relay.path)], out=out, syslog_address=None
    )
    assert (code, out.getvalue()) == (0, "2\n")


def test_account_changes_reach_the_system_log_without_private_data(relay: Config, tmp_path: Path) -> None:
    log_socket = tmp_path / "log.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslog:
        syslog.bind(str(log_socket))
        syslog.settimeout(5)
        code = admin.main(
            ["--config", str(relay.path), "accounts", "block", ALICE, "--yes"],
            out=io.StringIO(),
            syslog_address=str(log_socket),
        )
        assert code == 0
        received = [syslog.recv(4096).decode() for _ in range(2)]
    # "<14>" is facility user, priority info (RFC 3164).
    assert received == [
        f"<14>chatmail: blocked address {ALICE}\x00",
        f"<14>chatmail: deleted account {ALICE} (4 files)\x00",
    ]
    assert not any(HASH in message for message in received)
