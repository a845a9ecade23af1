from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP
from conftest import DOMAIN

from chatmaild.filtermail import FilterHandler, main, make_smtp_factory

SENDER = f"sender@{DOMAIN}"
RECIPIENT = f"recipient@{DOMAIN}"


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes


@dataclass
class FakePostfix:
    """Plays Postfix's reinjection listener and records what arrives."""

    reply: str = "250 OK"
    received: list[Received] = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope) -> str:
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return self.reply


@dataclass
class Relay:
    port: int
    postfix: FakePostfix

    async def client(self) -> aiosmtplib.SMTP:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=self.port, start_tls=False, use_tls=False)
        await smtp.connect()
        return smtp

    async def send(self, mail_from: str, rcpt_tos: list[str], data: bytes) -> tuple[int, str]:
        """Run one SMTP transaction; return the final reply code and text."""
        smtp = await self.client()
        try:
            await smtp.mail(mail_from)
            for rcpt in rcpt_tos:
                await smtp.rcpt(rcpt)
            response = await smtp.data(data)
            return response.code, response.message
        except aiosmtplib.SMTPResponseException as exc:
            return exc.code, exc.message
        finally:
            smtp.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def run_filter(make_config) -> Callable[..., None]:
    """Run ``scenario(relay)`` against filtermail in ``mode`` with a fake Postfix behind it."""

    def run(
        mode: str,
        scenario: Callable[[Relay], Awaitable[None]],
        postfix_reply: str = "250 OK",
        postfix_down: bool = False,
        **overrides: object,
    ) -> None:
        async def main() -> None:
            loop = asyncio.get_running_loop()
            postfix = FakePostfix(reply=postfix_reply)
            postfix_server = await loop.create_server(lambda: SMTP(postfix), "127.0.0.1", 0)
            postfix_port = postfix_server.sockets[0].getsockname()[1]
            if postfix_down:
                postfix_server.close()
                postfix_port = free_port()
            key = "postfix_reinject_port" if mode == "outgoing" else "postfix_reinject_port_incoming"
            config = make_config(**{key: postfix_port}, **overrides)
            handler = FilterHandler(config, mode)
            filter_server = await loop.create_server(make_smtp_factory(handler), "127.0.0.1", 0)
            relay = Relay(filter_server.sockets[0].getsockname()[1], postfix)
            async with postfix_server, filter_server:
                await scenario(relay)

        asyncio.run(main())

    return run


def test_outgoing_encrypted_mail_is_reinjected_byte_for_byte(run_filter, mails):
    data = mails.make("encrypted", from_addr=SENDER, to_addr=RECIPIENT)

    async def scenario(relay: Relay) -> None:
        assert await relay.send(SENDER, [RECIPIENT, "other@example.net"], data) == (250, "OK")
        assert relay.postfix.received == [Received(SENDER, [RECIPIENT, "other@example.net"], data)]

    run_filter("outgoing", scenario)


def test_outgoing_cleartext_is_refused_with_523(run_filter, mails):
    async def scenario(relay: Relay) -> None:
        code, message = await relay.send(SENDER, [RECIPIENT], mails.make("plain", SENDER, RECIPIENT))
        assert (code, message) == (523, "Encryption Needed: Invalid Unencrypted Mail")
        assert relay.postfix.received == []

    run_filter("outgoing", scenario)


def test_outgoing_forged_from_is_refused_with_500(run_filter, mails):
    data = mails.make("encrypted", from_addr="someone-else@chat.example.org")

    async def scenario(relay: Relay) -> None:
        code, message = await relay.send(SENDER, [RECIPIENT], data)
        assert code == 500
        assert message == f"Invalid FROM <someone-else@chat.example.org> for <{SENDER}>"

    run_filter("outgoing", scenario)


@pytest.mark.parametrize("sender", ["no-at-sign", '"two@at"@signs.example', "<>"])
def test_outgoing_envelope_sender_needs_exactly_one_at_sign(run_filter, sender):
    async def scenario(relay: Relay) -> None:
        smtp = await relay.client()
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as excinfo:
            await smtp.mail("" if sender == "<>" else sender)
        assert excinfo.value.code == 500
        assert excinfo.value.message.startswith("Invalid from address <")
        smtp.close()

    run_filter("outgoing", scenario)


def test_dsn_parameters_on_mail_and_rcpt_are_accepted(run_filter, mails):
    data = mails.make("encrypted", from_addr=SENDER, to_addr=RECIPIENT)

    async def scenario(relay: Relay) -> None:
        smtp = await relay.client()
        await smtp.ehlo()
        response = await smtp.mail(SENDER, options=["RET=HDRS", "ENVID=abc123", "BODY=8BITMIME", "SIZE=100"])
        assert response.code == 250
        response = await smtp.rcpt(RECIPIENT, options=[f"ORCPT=rfc822;{RECIPIENT}", "NOTIFY=SUCCESS,FAILURE"])
        assert response.code == 250
        assert (await smtp.data(data)).code == 250
        smtp.close()
        assert len(relay.postfix.received) == 1

    run_filter("outgoing", scenario)


def test_plain_aiosmtpd_still_refuses_rcpt_parameters():
    """Pins why ParameterTolerantSMTP exists; if this fails, aiosmtpd may have fixed it."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: SMTP(FakePostfix()), "127.0.0.1", 0)
        async with server:
            smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=server.sockets[0].getsockname()[1])
            await smtp.connect()
            await smtp.mail(SENDER)
            with pytest.raises(aiosmtplib.SMTPRecipientRefused) as excinfo:
                await smtp.rcpt(RECIPIENT, options=["NOTIFY=NEVER"])
            assert excinfo.value.code == 555
            smtp.close()

    asyncio.run(main())


def test_malformed_esmtp_parameters_are_still_refused(run_filter):
    async def scenario(relay: Relay) -> None:
        smtp = await relay.client()
        await smtp.ehlo()
        await smtp.mail(SENDER)
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as excinfo:
            await smtp.rcpt(RECIPIENT, options=["NOTIFY="])
        assert excinfo.value.code == 501
        smtp.close()

    run_filter("outgoing", scenario)


def test_message_larger_than_max_message_size_is_refused_with_552(run_filter, mails):
    data = mails.make("encrypted", from_addr=SENDER, to_addr=RECIPIENT)

    async def scenario(relay: Relay) -> None:
        code, _ = await relay.send(SENDER, [RECIPIENT], data)
        assert code == 552
        assert relay.postfix.received == []

    run_filter("outgoing", scenario, max_message_size=len(data) // 2)


def test_reinjection_refusal_is_passed_back_to_the_client(run_filter, mails):
    data = mails.make("encrypted", from_addr=SENDER, to_addr=RECIPIENT)

    async def scenario(relay: Relay) -> None:
        assert await relay.send(SENDER, [RECIPIENT], data) == (554, "5.7.1 Refused by policy")

    run_filter("outgoing", scenario, postfix_reply="554 5.7.1 Refused by policy")


def test_reinjection_connection_failure_defers_with_451(run_filter, mails, caplog):
    data = mails.make("encrypted", from_addr=SENDER, to_addr=RECIPIENT)

    async def scenario(relay: Relay) -> None:
        code, _ = await relay.send(SENDER, [RECIPIENT], data)
        assert code == 451

    with caplog.at_level(logging.WARNING):
        run_filter("outgoing", scenario, postfix_down=True)
    assert any("reinjection" in message for message in caplog.messages)


def test_incoming_mail_with_other_envelope_sender_is_reinjected_with_null_sender(run_filter, mails):
    data = mails.make("encrypted", from_addr="alice@remote.example", to_addr=RECIPIENT)

    async def scenario(relay: Relay) -> None:
        assert (await relay.send("srs=forwarder@lists.example", [RECIPIENT], data))[0] == 250
        assert relay.postfix.received == [Received("<>", [RECIPIENT], data)]

    run_filter("incoming", scenario)


def test_incoming_bounce_from_null_sender_is_accepted(run_filter, mails):
    data = mails.make("mailer-daemon", from_addr="MAILER-DAEMON@remote.example", to_addr=RECIPIENT)

    async def scenario(relay: Relay) -> None:
        assert (await relay.send("", [RECIPIENT], data))[0] == 250
        assert relay.postfix.received[0].mail_from == "<>"

    run_filter("incoming", scenario)


def test_incoming_cleartext_to_recipient_with_marker_is_refused(run_filter, mails, make_config):
    strict = f"strictuser@{DOMAIN}"
    make_config().get_user(strict).set_password("{SHA512-CRYPT}$6$salt$hash")
    data = mails.make("plain", from_addr="alice@remote.example", to_addr=strict)

    async def scenario(relay: Relay) -> None:
        code, _ = await relay.send("alice@remote.example", [RECIPIENT, strict.upper()], data)
        assert code == 523
        assert relay.postfix.received == []

    run_filter("incoming", scenario)


def test_incoming_cleartext_to_recipients_without_marker_is_accepted(run_filter, mails, make_config):
    legacy = f"legacyuser@{DOMAIN}"
    user = make_config().get_user(legacy)
    user.set_password("{SHA512-CRYPT}$6$salt$hash")
    user.allow_incoming_cleartext()
    data = mails.make("plain", from_addr="alice@remote.example", to_addr=legacy)

    async def scenario(relay: Relay) -> None:
        assert (await relay.send("alice@remote.example", [legacy, RECIPIENT], data))[0] == 250
        assert relay.postfix.received == [Received("alice@remote.example", [legacy, RECIPIENT], data)]

    run_filter("incoming", scenario)


def test_incoming_encrypted_mail_reaches_strict_recipients(run_filter, mails, make_config):
    strict = f"strictuser@{DOMAIN}"
    make_config().get_user(strict).set_password("{SHA512-CRYPT}$6$salt$hash")
    data = mails.make("encrypted", from_addr="alice@remote.example", to_addr=strict)

    async def scenario(relay: Relay) -> None:
        assert (await relay.send("alice@remote.example", [strict], data))[0] == 250
        assert relay.postfix.received[0].data == data

    run_filter("incoming", scenario)


def test_handler_bug_defers_mail_with_4xx(run_filter, mails, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr("chatmaild.mimecheck.check_outgoing", broken)
    data = mails.make("encrypted", from_addr=SENDER, to_addr=RECIPIENT)

    async def scenario(relay: Relay) -> None:
        code, _ = await relay.send(SENDER, [RECIPIENT], data)
        assert 400 <= code < 500

    run_filter("outgoing", scenario)


def test_unknown_mode_is_refused_by_name(config):
    with pytest.raises(ValueError, match="unknown filtermail mode 'sideways'"):
        FilterHandler(config, "sideways")


def test_cli_names_a_missing_config_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as excinfo:
        main([str(tmp_path / "missing.ini"), "outgoing"])
    assert excinfo.value.code == 2
    assert "missing.ini: configuration file not found" in capsys.readouterr().err
