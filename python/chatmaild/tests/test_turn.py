"""TURN REST credentials and their METADATA value."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging

import helpers_metadata
from helpers_metadata import exchange, run_with_server

from chatmaild.metadata import Metadata, MetadataDictProxy
from chatmaild.turn import DEFAULT_LIFETIME_SECONDS, TurnCredentials, make_credentials

TURN_KEY = "shared/0123abcd/vendor/vendor.dovecot/pvt/server/vendor/deltachat/turn"

socket_path = helpers_metadata.socket_path


def expected_password(secret: bytes, username: str) -> str:
    mac = hmac.new(secret, username.encode(), hashlib.sha1).digest()
    return base64.b64encode(mac).decode()


def test_password_is_the_base64_hmac_sha1_of_the_username():
    username, password = make_credentials(b"s3cret", 1758650868)
    assert username == "1758650868"
    assert password == expected_password(b"s3cret", "1758650868")


def test_credentials_expire_after_five_days_by_default(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text("s3cret\n")
    username, password = TurnCredentials(secret_file, now=lambda: 1000.5).create()
    assert DEFAULT_LIFETIME_SECONDS == 5 * 86400
    assert username == str(1000 + 5 * 86400)
    # the trailing newline is not part of the secret
    assert password == expected_password(b"s3cret", username)


def test_a_missing_secret_gives_no_credentials_and_is_logged_once(tmp_path, caplog):
    turn = TurnCredentials(tmp_path / "absent")
    with caplog.at_level(logging.ERROR, logger="chatmaild.turn"):
        assert turn.create() is None
        assert turn.create() is None
    assert len(caplog.records) == 1
    assert "absent" in caplog.text


def test_an_empty_secret_gives_no_credentials(tmp_path):
    (tmp_path / "secret").write_text("\n")
    assert TurnCredentials(tmp_path / "secret").create() is None


class NoNotifier:
    def enqueue(self, addr: str, token: str) -> None:
        raise AssertionError("no notification expected")


def lookup_turn(config, path, turn) -> bytes:
    proxy = MetadataDictProxy(config, Metadata(config.mailboxes_dir), NoNotifier(), turn)
    request = f"L{TURN_KEY}\tuser@example.org\n".encode()
    return run_with_server(proxy, path, lambda: exchange(path, request))


def test_turn_lookup_answers_domain_port_username_and_password(make_config, tmp_path, socket_path):
    config = make_config(turn_port=3479)
    (tmp_path / "secret").write_text("s3cret")
    reply = lookup_turn(config, socket_path, TurnCredentials(tmp_path / "secret", now=lambda: 1000))
    assert reply.endswith(b"\n") and reply.startswith(b"O")
    host, port, username, password = reply[1:-1].decode().split(":")
    assert (host, port, username) == ("chat.example.org", "3479", str(1000 + DEFAULT_LIFETIME_SECONDS))
    assert password == expected_password(b"s3cret", username)


def test_turn_lookup_of_an_ipv4_relay_uses_the_bracketed_address(make_config, tmp_path, socket_path):
    config = make_config(mail_domain="192.0.2.7")
    (tmp_path / "secret").write_text("s3cret")
    reply = lookup_turn(config, socket_path, TurnCredentials(tmp_path / "secret"))
    assert reply.startswith(b"O[192.0.2.7]:3478:")


def test_turn_lookup_without_a_secret_answers_not_found(config, tmp_path, socket_path):
    assert lookup_turn(config, socket_path, TurnCredentials(tmp_path / "absent")) == b"N\n"
