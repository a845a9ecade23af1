"""chatmail-lastlogin: the day of the last IMAP login as the password file's mtime."""

from __future__ import annotations

import os

import helpers_metadata
import pytest
from helpers_metadata import exchange, run_with_server

from chatmaild import lastlogin
from chatmaild.lastlogin import LastLoginDictProxy, address_from_key, day_start, set_last_login_day

ADDR = "someone01@chat.example.org"

socket_path = helpers_metadata.socket_path


@pytest.fixture
def account(config):
    user = config.get_user(ADDR)
    user.set_password("{SHA512-CRYPT}$6$salt$hash")
    return user


def login(config, path, key: str, value: str) -> bytes:
    request = f"H4\t0\t0\t\tlastlogin\nB1\t{ADDR}\t0\nS1\t{key}\t{value}\nC1\n".encode()
    return run_with_server(LastLoginDictProxy(config), path, lambda: exchange(path, request))


@pytest.mark.parametrize(("ts", "day"), [(100000, 86400), (200000, 172800), (86400 * 4 + 9, 86400 * 4)])
def test_times_are_rounded_down_to_the_start_of_the_utc_day(ts, day):
    assert day_start(ts) == day


def test_login_sets_the_password_mtime_to_the_day(config, account, socket_path):
    ts = 1_700_000_123
    assert login(config, socket_path, f"shared/last-login/{ADDR}", str(ts)) == b"O\n"
    assert int(account.password_path.stat().st_mtime) == ts // 86400 * 86400


def test_keys_without_the_shared_prefix_are_accepted(config, account, socket_path):
    assert login(config, socket_path, f"last-login/{ADDR}", "200000") == b"O\n"
    assert int(account.password_path.stat().st_mtime) == 172800


def test_the_file_is_touched_only_when_the_day_changes(account, monkeypatch):
    calls = []
    real_utime = os.utime
    monkeypatch.setattr(lastlogin.os, "utime", lambda *a: (calls.append(a), real_utime(*a)))
    for i in range(10):
        assert set_last_login_day(account, 86400 * 4 + i)
    assert int(account.password_path.stat().st_mtime) == 86400 * 4
    assert len(calls) == 1


def test_logins_of_unknown_accounts_create_nothing(config, socket_path):
    assert login(config, socket_path, f"shared/last-login/{ADDR}", "200000") == b"O\n"
    assert not (config.mailboxes_dir / ADDR).exists()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("shared/other/key", "200000"),
        (f"shared/last-login/{ADDR}", "yesterday"),
        ("shared/last-login/../../etc", "200000"),
        ("shared/last-login/", "200000"),
    ],
)
def test_other_keys_and_bad_values_fail_the_commit(config, account, socket_path, key, value):
    before = account.password_path.stat().st_mtime
    assert login(config, socket_path, key, value) == b"F\n"
    assert account.password_path.stat().st_mtime == before


def test_address_is_taken_from_the_key():
    assert address_from_key(f"shared/last-login/{ADDR}") == ADDR
    assert address_from_key("priv/last-login/x@y") is None


def test_help_describes_the_socket_option(capsys):
    with pytest.raises(SystemExit) as exc:
        lastlogin.main(["--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "[--socket PATH]" in out and "CONFIG" in out


def set_in_transaction(config, path, user: str, key: str, value: str, now: float = 1_800_000_000) -> bytes:
    request = f"B1\t{user}\t0\nS1\t{key}\t{value}\nC1\n".encode()
    proxy = LastLoginDictProxy(config, now=lambda: now)
    return run_with_server(proxy, path, lambda: exchange(path, request))


@pytest.mark.parametrize("user", ["other01@chat.example.org", ""])
def test_a_transaction_can_only_set_its_own_users_last_login(config, account, socket_path, user):
    before = account.password_path.stat().st_mtime
    assert set_in_transaction(config, socket_path, user, f"shared/last-login/{ADDR}", "1700000000") == b"F\n"
    assert account.password_path.stat().st_mtime == before


def test_the_own_user_is_matched_without_regard_to_case(config, account, socket_path):
    assert set_in_transaction(config, socket_path, ADDR.upper(), f"shared/last-login/{ADDR}", "1700000000") == b"O\n"
    assert int(account.password_path.stat().st_mtime) == 1700000000 // 86400 * 86400


@pytest.mark.parametrize("value", ["0", "-1", "-86400", str(1_800_000_000 + 86400), "99999999999999", "١٢٣", "1_0", " 5"])
def test_implausible_login_times_are_refused(config, account, socket_path, value):
    before = account.password_path.stat().st_mtime
    assert set_in_transaction(config, socket_path, ADDR, f"shared/last-login/{ADDR}", value) == b"F\n"
    assert account.password_path.stat().st_mtime == before


def test_a_login_time_slightly_ahead_of_the_clock_is_taken(config, account, socket_path):
    ts = 1_800_000_000 + 60
    assert set_in_transaction(config, socket_path, ADDR, f"shared/last-login/{ADDR}", str(ts)) == b"O\n"
    assert int(account.password_path.stat().st_mtime) == ts // 86400 * 86400
