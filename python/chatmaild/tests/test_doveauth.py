from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Awaitable, Callable

import pytest

from chatmaild.doveauth import (
    ALLOWED,
    AccountStore,
    DoveauthServer,
    check_creation_allowed,
    main,
    write_token_file,
)

TOKEN = "f" * 64
ADDR = "abcdefghi@chat.example.org"
PASSWORD = "correct-horse-battery"


async def http(
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    token: str | None = TOKEN,
    raw: bytes | None = None,
) -> tuple[int, bytes]:
    """Send one request on a fresh connection and read the response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if raw is None:
            head = [f"{method} {path} HTTP/1.1", "Host: localhost", f"Content-Length: {len(body)}"]
            if token is not None:
                head.append(f"X-Chatmail-Token: {token}")
            raw = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        writer.write(raw)
        await writer.drain()
        return await read_response(reader)
    finally:
        writer.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status = int(head.split(" ", 2)[1])
    length = 0
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "content-length":
            length = int(value)
    return status, await reader.readexactly(length)


def passdb_body(addr: str = ADDR, password: str = PASSWORD) -> bytes:
    return f"{addr}\n{password}".encode()


@pytest.fixture
def run_server(config) -> Callable[[Callable[[int], Awaitable[None]]], None]:
    """Run ``scenario(port)`` against a doveauth server listening on a free port."""

    def run(scenario: Callable[[int], Awaitable[None]], cfg=None) -> None:
        async def main() -> None:
            # The host's load is not under test (a busy test machine would refuse creations).
            store = AccountStore(cfg or config, resource_gate=lambda _: ALLOWED)
            server = await DoveauthServer(store, TOKEN).start("127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            async with server:
                await scenario(port)

        asyncio.run(main())

    return run


def test_first_login_creates_account_and_returns_its_hash(run_server, config, caplog):
    async def scenario(port: int) -> None:
        assert await http(port, "POST", "/userdb", ADDR.encode()) == (404, b"")
        status, body = await http(port, "POST", "/passdb", passdb_body())
        assert status == 200
        assert body.startswith(b"{SHA512-CRYPT}$6$")
        assert await http(port, "POST", "/userdb", ADDR.encode()) == (200, b"")

    with caplog.at_level(logging.INFO, logger="chatmaild.doveauth"):
        run_server(scenario)
    user = config.get_user(ADDR)
    assert user.password_path.read_text().startswith("{SHA512-CRYPT}$6$")
    assert not user.is_incoming_cleartext_ok()
    assert f"Created address: {ADDR}" in caplog.messages
    assert not any(PASSWORD in message for message in caplog.messages)


def test_user_name_is_lowercased(run_server, config):
    async def scenario(port: int) -> None:
        status, _ = await http(port, "POST", "/passdb", passdb_body(ADDR.upper()))
        assert status == 200

    run_server(scenario)
    assert config.get_user(ADDR).exists()


def test_existing_password_is_returned_not_overwritten_on_wrong_login(run_server):
    async def scenario(port: int) -> None:
        _, first = await http(port, "POST", "/passdb", passdb_body())
        status, second = await http(port, "POST", "/passdb", passdb_body(password="another-password"))
        assert status == 200
        assert second == first

    run_server(scenario)


def test_password_may_contain_newlines_and_quotes(run_server):
    password = "pass\"word\n\\with'lines"

    async def scenario(port: int) -> None:
        status, body = await http(port, "POST", "/passdb", passdb_body(password=password))
        assert status == 200
        from chatmaild.sha512crypt import verify

        assert verify(password, body.decode().removeprefix("{SHA512-CRYPT}"))

    run_server(scenario)


def test_other_domains_are_not_found(run_server, config):
    async def scenario(port: int) -> None:
        assert await http(port, "POST", "/passdb", passdb_body("abcdefghi@other.example")) == (404, b"")
        assert await http(port, "POST", "/userdb", b"abcdefghi@other.example") == (404, b"")

    run_server(scenario)
    assert not config.mailboxes_dir.exists()


@pytest.mark.parametrize(
    ("addr", "password", "reason"),
    [
        (ADDR, "pw4x", "password shorter"),
        ("abc@def@chat.example.org", PASSWORD, "exactly one '@'"),
        ("abcd@chat.example.org", PASSWORD, "local part length 4"),
        ("abcdefghijk@chat.example.org", PASSWORD, "local part length 11"),
        ("abc+defgh@chat.example.org", PASSWORD, "may only contain"),
    ],
)
def test_refused_creation_is_not_found_and_logged_without_password(
    run_server, config, caplog, addr, password, reason
):
    async def scenario(port: int) -> None:
        assert await http(port, "POST", "/passdb", passdb_body(addr, password)) == (404, b"")

    with caplog.at_level(logging.WARNING, logger="chatmaild.doveauth"):
        run_server(scenario)
    assert any(reason in message for message in caplog.messages)
    assert not any(password in message for message in caplog.messages)
    assert not config.get_user(addr.lower()).password_path.exists()


def test_nocreate_file_blocks_new_accounts_but_not_existing_ones(run_server, config):
    existing = "existing1@chat.example.org"

    async def scenario(port: int) -> None:
        status, first = await http(port, "POST", "/passdb", passdb_body(existing))
        assert status == 200
        config.nocreate_file.touch()
        assert await http(port, "POST", "/passdb", passdb_body()) == (404, b"")
        assert await http(port, "POST", "/passdb", passdb_body(existing)) == (200, first)

    run_server(scenario)


def test_blocked_address_is_not_found_whether_or_not_its_account_exists(run_server, config):
    blocked_existing = "existing1@chat.example.org"

    async def scenario(port: int) -> None:
        assert (await http(port, "POST", "/passdb", passdb_body(blocked_existing)))[0] == 200
        config.blocklist_file.write_text(f"{ADDR}\n{blocked_existing.upper()}\n")
        assert await http(port, "POST", "/passdb", passdb_body()) == (404, b"")
        assert await http(port, "POST", "/passdb", passdb_body(blocked_existing)) == (404, b"")

    run_server(scenario)
    assert not config.get_user(ADDR).password_path.exists()


@pytest.mark.parametrize(("length", "allowed"), [(5, False), (6, True), (7, True), (10, True), (11, False)])
def test_local_part_length_limits_are_configurable(make_config, length, allowed):
    config = make_config(username_min_length=6, username_max_length=10)
    addr = "a" * length + "@chat.example.org"
    assert check_creation_allowed(config, addr, PASSWORD).allowed is allowed


@pytest.mark.parametrize("localpart", ["a.b-c_d12", "abc123xyz"])
def test_local_part_may_use_lowercase_digits_dot_dash_underscore(config, localpart):
    assert check_creation_allowed(config, f"{localpart}@chat.example.org", PASSWORD).allowed


@pytest.mark.parametrize("localpart", ["ABCDEFGHI", "abcd efgh", "abcd!efgh", "abcd/efgh", "abcd\\efgh"])
def test_local_part_with_other_characters_is_refused(config, localpart):
    assert not check_creation_allowed(config, f"{localpart}@chat.example.org", PASSWORD).allowed


def test_resource_gate_refusal_prevents_creation(make_config, run_server):
    from chatmaild.doveauth import Decision

    config = make_config()
    store = AccountStore(config, resource_gate=lambda cfg: Decision(False, "load too high"))

    async def main() -> None:
        assert await store.login(ADDR, PASSWORD) is None

    asyncio.run(main())
    assert not config.get_user(ADDR).exists()


@pytest.mark.parametrize("token", [None, "", "0" * 64])
def test_requests_without_the_right_token_are_forbidden(run_server, config, token):
    async def scenario(port: int) -> None:
        assert await http(port, "POST", "/passdb", passdb_body(), token=token) == (403, b"")
        assert await http(port, "POST", "/userdb", ADDR.encode(), token=token) == (403, b"")

    run_server(scenario)
    assert not config.mailboxes_dir.exists()


def test_unknown_paths_and_methods_are_refused(run_server):
    async def scenario(port: int) -> None:
        assert (await http(port, "POST", "/other", b""))[0] == 404
        assert (await http(port, "GET", "/passdb"))[0] == 405

    run_server(scenario)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"POST /passdb HTTP/1.1\r\nbroken header line\r\n\r\n", 400),
        (b"POST /passdb HTTP/1.1\r\nContent-Length: many\r\n\r\n", 400),
        (b"POST /passdb HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n", 400),
        (b"POST /passdb HTTP/1.1\r\nContent-Length: 1\xb9\r\n\r\n", 400),
        (b"POST /passdb HTTP/1.1\r\nContent-Length: \xc2\xb2\r\n\r\n", 400),
        (b"POST /passdb HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST /passdb HTTP/1.1\r\nContent-Length: +12\r\n\r\n", 400),
        (b"POST /passdb HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST /passdb HTTP/1.1\r\nContent-Length: 5000\r\n\r\n", 413),
        (b"POST /passdb HTTP/1.1\r\nX-Filler: " + b"x" * 9000 + b"\r\n\r\n", 413),
    ],
)
def test_malformed_request_is_refused_and_server_keeps_serving(run_server, raw, status):
    async def scenario(port: int) -> None:
        assert (await http(port, "POST", "/passdb", raw=raw))[0] == status
        assert (await http(port, "POST", "/passdb", passdb_body()))[0] == 200

    run_server(scenario)


def test_passdb_body_without_newline_is_a_bad_request(run_server):
    async def scenario(port: int) -> None:
        assert (await http(port, "POST", "/passdb", ADDR.encode()))[0] == 400

    run_server(scenario)


def test_connection_idle_longer_than_the_timeout_is_closed_and_the_server_keeps_serving(
    run_server, monkeypatch
):
    monkeypatch.setattr("chatmaild.doveauth.IDLE_TIMEOUT_SECONDS", 0.2)

    async def scenario(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /passdb HTTP/1.1\r\n")  # and then nothing more
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        status, _ = await http(port, "POST", "/passdb", passdb_body())
        assert status == 200

    run_server(scenario)


def test_keep_alive_connection_is_not_cut_while_it_keeps_sending_requests(run_server, monkeypatch):
    monkeypatch.setattr("chatmaild.doveauth.IDLE_TIMEOUT_SECONDS", 0.3)

    async def scenario(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(4):
            await asyncio.sleep(0.15)  # together longer than the timeout, each shorter
            body = passdb_body()
            writer.write(
                b"POST /passdb HTTP/1.1\r\nX-Chatmail-Token: " + TOKEN.encode()
                + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            status, _ = await read_response(reader)
            assert status == 200
        writer.close()

    run_server(scenario)


def test_connection_is_kept_alive_for_several_requests(run_server):
    async def scenario(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(3):
            body = passdb_body()
            writer.write(
                b"POST /passdb HTTP/1.1\r\nX-Chatmail-Token: "
                + TOKEN.encode()
                + b"\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
            status, _ = await read_response(reader)
            assert status == 200
        writer.close()

    run_server(scenario)


def test_concurrent_first_logins_create_the_account_once(run_server, config, caplog):
    async def scenario(port: int) -> None:
        results = await asyncio.gather(*(http(port, "POST", "/passdb", passdb_body()) for _ in range(20)))
        assert {status for status, _ in results} == {200}
        assert len({body for _, body in results}) == 1

    with caplog.at_level(logging.INFO, logger="chatmaild.doveauth"):
        run_server(scenario)
    assert caplog.messages.count(f"Created address: {ADDR}") == 1


def test_token_file_is_private_and_holds_a_random_hex_token(tmp_path):
    path = tmp_path / "token"
    token = write_token_file(path)
    assert len(token) == 64 and int(token, 16) >= 0
    assert path.read_text() == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert write_token_file(path) != token
    assert [p.name for p in tmp_path.iterdir()] == ["token"]


def test_cli_refuses_invalid_listen_address(config, capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["--listen", "nowhere", str(config.path)])
    assert excinfo.value.code == 2
    assert "invalid listen address 'nowhere'" in capsys.readouterr().err


def test_cli_names_a_missing_config_file(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing.ini")])
    assert "missing.ini: configuration file not found" in capsys.readouterr().err


def test_non_ascii_digit_in_content_length_gives_a_clean_400_before_the_token_check(run_server, caplog):
    async def scenario(port: int) -> None:
        raw = b"POST /passdb HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n"
        status, body = await http(port, "POST", "/passdb", raw=raw)
        assert status == 400
        assert b"invalid Content-Length" in body

    with caplog.at_level(logging.DEBUG):
        run_server(scenario)
    assert not [record for record in caplog.records if record.exc_info]


@pytest.mark.parametrize("spelling", ["\u212aabcdefgh", "\u0130abcdefgh", "abcdefgh\u212a", "ABCDEFGH\u212a"])
def test_non_ascii_spellings_do_not_reach_or_create_ascii_accounts(run_server, config, spelling):
    existing = "kabcdefgh@chat.example.org"
    domain = "@chat.example.org"

    async def scenario(port: int) -> None:
        assert (await http(port, "POST", "/passdb", passdb_body(existing)))[0] == 200
        assert (await http(port, "POST", "/passdb", passdb_body(spelling + domain)))[0] == 404
        assert (await http(port, "POST", "/userdb", (spelling + domain).encode()))[0] == 404
        assert (await http(port, "POST", "/passdb", passdb_body("abcdefghk" + domain)))[0] == 200

    run_server(scenario)
    accounts = sorted(path.name for path in config.mailboxes_dir.iterdir())
    assert accounts == ["abcdefghk@chat.example.org", existing]


def test_the_daemon_creates_accounts_without_loading_a_file_lock_library(tmp_path) -> None:
    """Account creation needs no lock (the password file is linked into place), so the
    daemon's memory, a fixed cost of every relay, never carries the library."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, chatmaild.doveauth as d\n"
        "from chatmaild.config import read_config\n"
        f"store = d.AccountStore(read_config({str(tmp_path / 'chatmail.ini')!r}))\n"
        "print(store._create('abcdefghi@chat.example.org', 'p' * 20)[:14], 'filelock' in sys.modules)"
    )
    (tmp_path / "chatmail.ini").write_text(
        f"[params]\nmail_domain = chat.example.org\nmailboxes_dir = {tmp_path / 'mail'}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["{SHA512-CRYPT}", "False"]
    assert (tmp_path / "mail/abcdefghi@chat.example.org/password").read_text().startswith("{SHA512-CRYPT}$6$")


def test_an_emptied_password_file_keeps_the_account_blocked_against_new_logins(run_server, config, caplog):
    """Emptying ``password`` is how an operator blocks an account: a login with any
    password must neither pass nor write a new hash over it."""
    user = config.get_user(ADDR)
    user.maildir.mkdir(parents=True)
    user.password_path.write_text("")

    async def scenario(port: int) -> None:
        status, _ = await http(port, "POST", "/passdb", passdb_body())
        assert status == 404

    with caplog.at_level(logging.INFO, logger="chatmaild.doveauth"):
        run_server(scenario)
    assert user.password_path.read_text() == ""
    assert f"Created address: {ADDR}" not in caplog.messages
    assert [name for name in os.listdir(user.maildir) if name.startswith("password.tmp")] == []
