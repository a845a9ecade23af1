"""chatmail-metadata: device tokens, server attributes and the messagenew hook."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import helpers_metadata
import pytest
from aiohttp import web
from helpers_metadata import exchange, run_with_server

from chatmaild import cli as cli_module
from chatmaild import metadata as metadata_module
from chatmaild.metadata import (
    TOKEN_VALIDITY_SECONDS,
    Metadata,
    MetadataDictProxy,
    split_key,
    valid_tokens,
)
from chatmaild.notifier import Notifier
from chatmaild.turn import TurnCredentials

ADDR = "user@example.org"
SERVER = "shared/0123abcd/vendor/vendor.dovecot/pvt/server/vendor/deltachat"
NOW = 1_700_000_000

socket_path = helpers_metadata.socket_path


class RecordingNotifier:
    def __init__(self) -> None:
        self.queued: list[tuple[str, str]] = []

    def enqueue(self, addr: str, token: str) -> None:
        self.queued.append((addr, token))


@pytest.fixture
def mailbox(config):
    path = config.mailboxes_dir / ADDR
    path.mkdir(parents=True)
    return path


@pytest.fixture
def metadata(config):
    return Metadata(config.mailboxes_dir, now=lambda: NOW)


def make_proxy(config, metadata, notifier=None):
    turn = TurnCredentials(config.mailboxes_dir / "no-secret")
    return MetadataDictProxy(config, metadata, notifier or RecordingNotifier(), turn)


def talk(proxy, path, request: bytes) -> bytes:
    return run_with_server(proxy, path, lambda: exchange(path, request))


def test_a_registered_token_is_returned_by_the_next_lookup(config, mailbox, metadata, socket_path):
    proxy = make_proxy(config, metadata)

    async def body() -> tuple[bytes, bytes]:
        first = await exchange(
            socket_path,
            b"HELLO\nBtx00\tuser@example.org\nStx00\tpriv/guid00/devicetoken\t01234\nCtx00",
        )
        second = await exchange(socket_path, b"Lpriv/0123/devicetoken\tuser@example.org\n")
        return first, second

    assert run_with_server(proxy, socket_path, body) == (b"O\n", b"O01234\n")


def test_device_token_lookup_of_an_account_without_tokens_is_empty(config, mailbox, metadata, socket_path):
    reply = talk(make_proxy(config, metadata), socket_path, b"Lpriv/0123/devicetoken\tuser@example.org\n")
    assert reply == b"O\n"


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("priv/guid/devicetoken", ("priv", "devicetoken")),
        ("priv/guid/messagenew", ("priv", "messagenew")),
        (f"{SERVER}/irohrelay", ("deltachat", "irohrelay")),
        ("shared/vendor/deltachat/turn", ("deltachat", "turn")),
        ("vendor/deltachat/turn", None),
        ("wrong/prefix/key", None),
        ("shared/guid/vendor/other/turn", None),
    ],
)
def test_keys_are_classified_by_their_last_components(key, expected):
    assert split_key(key) == expected


def test_server_attributes_describe_the_relay(make_config, tmp_path, socket_path):
    config = make_config(iroh_relay="https://example.org/")
    proxy = make_proxy(config, Metadata(config.mailboxes_dir))
    request = (
        f"L{SERVER}/irohrelay\t{ADDR}\n"
        f"L{SERVER}/maxsmtprecipients\t{ADDR}\n"
        f"L{SERVER}/appversions\t{ADDR}\n"
        f"L{SERVER}/unknown\t{ADDR}\n"
        f"Lwrong/prefix/key\t{ADDR}\n"
        f"Lvendor/deltachat/unknown\t{ADDR}\n"
        f"Lpriv/123/chatmail\t{ADDR}\n"
        f"I0\t0\tpriv/123/\t{ADDR}\n"
    ).encode()
    assert talk(proxy, socket_path, request) == b"Ohttps://example.org/\nO1000\nN\nN\nN\nN\nN\n\n"


def test_with_the_defaults_no_iroh_relay_is_offered(config, metadata, socket_path):
    # This relay runs no iroh relay: advertising https://<domain> would send clients nowhere.
    reply = talk(make_proxy(config, metadata), socket_path, f"L{SERVER}/irohrelay\t{ADDR}\n".encode())
    assert reply == b"N\n"


def test_unknown_sets_fail_the_commit_and_are_logged_without_values(
    config, mailbox, metadata, socket_path, caplog
):
    request = f"B1\t{ADDR}\nS1\tpriv/guid/other\tsecret-value\nC1\n".encode()
    with caplog.at_level(logging.DEBUG, logger="chatmaild"):
        assert talk(make_proxy(config, metadata), socket_path, request) == b"F\n"
    assert "priv/guid/other" in caplog.text
    assert "secret-value" not in caplog.text


def test_tokens_of_accounts_without_a_mailbox_are_refused(config, metadata, socket_path):
    request = b"B1\tnobody@example.org\nS1\tpriv/guid/devicetoken\ttok\nC1\n"
    assert talk(make_proxy(config, metadata), socket_path, request) == b"F\n"
    assert not (config.mailboxes_dir / "nobody@example.org").exists()


def test_messagenew_queues_one_notification_per_token(config, mailbox, metadata, socket_path):
    notifier = RecordingNotifier()
    metadata.add_token(ADDR, "1111")
    metadata.add_token(ADDR, "2222")
    request = f"B1\t{ADDR}\nS1\tpriv/guid/messagenew\t\nC1\n".encode()
    assert talk(make_proxy(config, metadata, notifier), socket_path, request) == b"O\n"
    assert notifier.queued == [(ADDR, "1111"), (ADDR, "2222")]


def test_refreshing_a_token_keeps_the_order_of_first_registration(mailbox, metadata):
    for token in ("1111", "2222", "1111"):
        metadata.add_token(ADDR, token)
    assert metadata.get_tokens(ADDR) == ["1111", "2222"]


def test_expired_and_future_tokens_are_dropped_and_the_file_is_cleaned(mailbox, metadata):
    stored = {
        "expired": NOW - TOKEN_VALIDITY_SECONDS - 1,
        "old-but-valid": NOW - TOKEN_VALIDITY_SECONDS + 10,
        "future": NOW + 3600,
        "current": NOW,
    }
    (mailbox / "metadata.json").write_text(json.dumps({"devicetoken": stored}))
    assert metadata.get_tokens(ADDR) == ["old-but-valid", "current"]
    on_disk = json.loads((mailbox / "metadata.json").read_text())["devicetoken"]
    assert list(on_disk) == ["old-but-valid", "current"]


def test_tokens_in_the_legacy_list_format_are_migrated_on_read(mailbox, metadata):
    (mailbox / "metadata.json").write_text(json.dumps({"devicetoken": ["aaa", "bbb"]}))
    assert metadata.get_tokens(ADDR) == ["aaa", "bbb"]
    on_disk = json.loads((mailbox / "metadata.json").read_text())
    assert on_disk == {"devicetoken": {"aaa": NOW, "bbb": NOW}}


def test_valid_tokens_ignores_garbage():
    assert valid_tokens("nonsense", NOW) == {}
    assert valid_tokens({"a": "yesterday", "b": NOW}, NOW) == {"b": NOW}
    assert valid_tokens(["", 5, "c"], NOW) == {"c": NOW}


def test_removing_an_absent_token_changes_nothing(config, mailbox, metadata):
    metadata.remove_token("stranger@example.org", "x")
    metadata.add_token(ADDR, "keep")
    metadata.remove_token(ADDR, "other")
    assert metadata.get_tokens(ADDR) == ["keep"]
    metadata.remove_token(ADDR, "keep")
    assert metadata.get_tokens(ADDR) == []
    assert not (config.mailboxes_dir / "stranger@example.org").exists()


def test_the_queue_file_exists_before_the_commit_is_acknowledged(config, mailbox, socket_path):
    """Crash safety: once Dovecot sees O, the notification survives any restart."""
    metadata = Metadata(config.mailboxes_dir)
    metadata.add_token(ADDR, "tok-1")
    queue = config.mailboxes_dir / "pending_notifications"
    seen: list[list[str]] = []

    async def body() -> None:
        app = web.Application()
        gate = asyncio.Event()

        async def never_answer(request: web.Request) -> web.Response:
            await gate.wait()
            return web.Response(status=500)

        app.router.add_post("/notify", never_answer)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        notifier = Notifier(queue, f"http://{host}:{port}/notify", metadata.remove_token)
        await notifier.start()
        proxy = MetadataDictProxy(config, metadata, notifier, TurnCredentials(queue / "none"))
        server = await proxy.start(socket_path)
        async with server:
            reply = await exchange(socket_path, f"B1\t{ADDR}\nS1\tpriv/g/messagenew\t\nC1\n".encode())
            assert reply == b"O\n"
            seen.append([p.read_text() for p in queue.iterdir()])
        await notifier.stop()
        gate.set()
        await runner.cleanup()

    asyncio.run(body())
    [[content]] = seen
    addr, _ts, token = content.split("\n", 2)
    assert (addr, token) == (ADDR, "tok-1")
    assert len(list(queue.iterdir())) == 1
    assert all(len(p.name) == len(uuid.uuid4().hex) for p in queue.iterdir())


def test_help_names_the_default_socket(capsys):
    with pytest.raises(SystemExit) as exc:
        metadata_module.main(["--help"])
    assert exc.value.code == 0
    assert "[--socket PATH]" in " ".join(capsys.readouterr().out.split())


def test_start_fails_when_the_mailboxes_dir_is_missing(make_config, tmp_path, caplog, monkeypatch):
    config = make_config(mailboxes_dir=tmp_path / "absent")
    monkeypatch.setattr(cli_module, "setup_logging", lambda verbose: None)
    with caplog.at_level(logging.ERROR):
        assert metadata_module.main([str(config.path)]) == 1
    assert "absent" in caplog.text


def test_without_a_turn_secret_file_no_turn_server_is_offered(config, metadata, socket_path):
    assert config.turn_secret_file is None
    proxy = MetadataDictProxy(config, metadata, RecordingNotifier())
    assert talk(proxy, socket_path, b"Lshared/vendor/deltachat/turn\tu@x\n") == b"N\n"


def test_an_account_keeps_at_most_the_newest_tokens_oldest_expire_first(config, mailbox):
    from chatmaild.metadata import MAX_TOKENS_PER_ACCOUNT

    clock = [NOW - 5000.0]
    metadata = Metadata(config.mailboxes_dir, now=lambda: clock[0])
    for i in range(MAX_TOKENS_PER_ACCOUNT + 980):
        clock[0] += 1
        metadata.add_token(ADDR, f"token-{i:04}")
    tokens = metadata.get_tokens(ADDR)
    assert len(tokens) == MAX_TOKENS_PER_ACCOUNT
    assert tokens == [f"token-{i:04}" for i in range(980, 980 + MAX_TOKENS_PER_ACCOUNT)]
    # A refreshed old token survives the next registrations; the unrefreshed oldest go.
    clock[0] += 1
    metadata.add_token(ADDR, "token-0980")
    clock[0] += 1
    metadata.add_token(ADDR, "brand-new")
    tokens = metadata.get_tokens(ADDR)
    assert "token-0980" in tokens and "brand-new" in tokens and "token-0981" not in tokens
    assert len(tokens) == MAX_TOKENS_PER_ACCOUNT


def test_a_delivery_queues_at_most_the_token_cap_even_from_an_oversized_file(config, mailbox, metadata, socket_path):
    from chatmaild.metadata import MAX_TOKENS_PER_ACCOUNT

    stored = {f"t{i}": NOW - 1000 + i for i in range(1000)}
    (mailbox / "metadata.json").write_text(json.dumps({"devicetoken": stored}))
    notifier = RecordingNotifier()
    request = f"B1\t{ADDR}\nS1\tpriv/guid/messagenew\t\nC1\n".encode()
    assert talk(make_proxy(config, metadata, notifier), socket_path, request) == b"O\n"
    assert [token for _, token in notifier.queued] == [f"t{i}" for i in range(1000 - MAX_TOKENS_PER_ACCOUNT, 1000)]


def test_an_oversized_token_is_refused_with_a_clear_metadata_error(config, mailbox, metadata, socket_path):
    from chatmaild.metadata import MAX_TOKEN_BYTES

    request = f"B1\t{ADDR}\nS1\tpriv/guid/devicetoken\t{'x' * (MAX_TOKEN_BYTES + 1)}\nC1\n".encode()
    reply = talk(make_proxy(config, metadata), socket_path, request)
    assert reply == f"F\tMETADATA device token larger than {MAX_TOKEN_BYTES} bytes refused\n".encode()
    assert metadata.get_tokens(ADDR) == []
    fitting = f"B1\t{ADDR}\nS1\tpriv/guid/devicetoken\t{'x' * MAX_TOKEN_BYTES}\nC1\n".encode()
    assert talk(make_proxy(config, metadata), socket_path, fitting) == b"O\n"
