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

from chatmaild.dkimcheck import DkimVerifier
from chatmaild import filtermail
from chatmaild.filtermail import FilterHandler, ParameterTolerantSMTP, main, make_smtp_factory
from chatmaild.ratelimit import RateLimiter

SENDER = f"sender@{DOMAIN}"
RECIPIENT = f"recipient@{DOMAIN}"
REMOTE = "remote.example"


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
    connections: int = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses) -> list[str]:
        self.connections += 1  # each connection greets once
        session.host_name = hostname
        return responses

    async def handle_DATA(self, server, session, envelope) -> str:
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return self.reply


@dataclass
class Relay:
    port: int
    postfix: FakePostfix
    handler: FilterHandler

    async def client(self) -> aiosmtplib.SMTP:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=self.port, start_tls=False, use_tls=False)
        await smtp.connect()
        return smtp

    async def send(self, mail_from: str, rcpt_tos: list[str], data: bytes) -> tuple[int, str]:
        """Run one SMTP transaction; return the final reply code and text."""
        smtp = await self.client()
        try:
            return await transaction(smtp, mail_from, rcpt_tos, data)
        finally:
            smtp.close()


async def transaction(smtp: aiosmtplib.SMTP, mail_from: str, rcpt_tos: list[str], data: bytes) -> tuple[int, str]:
    """MAIL, RCPT, DATA on a connected client; the final reply code and text (a refusal included)."""
    try:
        await smtp.mail(mail_from)
        for rcpt in rcpt_tos:
            await smtp.rcpt(rcpt)
        response = await smtp.data(data)
        return response.code, response.message
    except aiosmtplib.SMTPResponseException as exc:
        return exc.code, exc.message


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def run_filter(make_config, dkim_domains) -> Callable[..., None]:
    """Run ``scenario(relay)`` against filtermail in ``mode`` with a fake Postfix behind it.

    Incoming mode verifies DKIM against the keys of ``dkim_domains``.
    """

    def run(
        mode: str,
        scenario: Callable[[Relay], Awaitable[None]],
        postfix_reply: str = "250 OK",
        postfix_down: bool = False,
        ratelimiter: RateLimiter | None = None,
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
            dkim = DkimVerifier(lookup_txt=dkim_domains.lookup_txt)
            handler = FilterHandler(config, mode, ratelimiter=ratelimiter, dkim=dkim)
            filter_server = await loop.create_server(make_smtp_factory(handler), "127.0.0.1", 0)
            relay = Relay(filter_server.sockets[0].getsockname()[1], postfix, handler)
            async with postfix_server, filter_server:
                try:
                    await scenario(relay)
                finally:
                    # Pooled reinjection connections would keep the fake Postfix's
                    # wait_closed() waiting (Python >= 3.12 waits for its clients).
                    await handler.close_reinjections()

        asyncio.run(main())

    return run


def test_outgoing_encrypted_mail_is_reinjected_byte_for_byte_but_for_its_subject(run_filter, mails):
    data = mails.make("encrypted", from_addr=SENDER, to_addr=RECIPIENT)
    assert b"\r\nSubject: ...\r\n" in data
    hidden = data.replace(b"\r\nSubject: ...\r\n", b"\r\nSubject: [...]\r\n")

    async def scenario(relay: Relay) -> None:
        assert await relay.send(SENDER, [RECIPIENT, "other@example.net"], data) == (250, "OK")
        assert relay.postfix.received == [Received(SENDER, [RECIPIENT, "other@example.net"], hidden)]

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


def test_consecutive_messages_share_one_reinjection_connection(run_filter, mails):
    data = mails.make("encrypted", from_addr=SENDER, to_addr=RECIPIENT)

    async def scenario(relay: Relay) -> None:
        for _ in range(3):
            assert (await relay.send(SENDER, [RECIPIENT], data))[0] == 250
        assert len(relay.postfix.received) == 3
        assert relay.postfix.connections == 1

    run_filter("outgoing", scenario)


def test_reinjection_connection_idle_too_long_is_not_reused(run_filter, mails):
    data = mails.make("encrypted", from_addr=SENDER, to_addr=RECIPIENT)
    now = [1000.0]

    async def scenario(relay: Relay) -> None:
        relay.handler.reinject_pool.clock = lambda: now[0]
        assert (await relay.send(SENDER, [RECIPIENT], data))[0] == 250
        now[0] += relay.handler.reinject_pool.MAX_IDLE_SECONDS + 1
        assert (await relay.send(SENDER, [RECIPIENT], data))[0] == 250
        assert relay.postfix.connections == 2
        assert len(relay.postfix.received) == 2

    run_filter("outgoing", scenario)


def test_an_idle_reinjection_connection_is_closed_without_waiting_for_another_message(run_filter, mails):
    """Nothing stays open towards Postfix on an idle relay (and a server that waits for its
    clients at shutdown, as Python 3.12+ does, is not kept waiting)."""
    data = mails.make("encrypted", from_addr=SENDER, to_addr=RECIPIENT)

    async def scenario(relay: Relay) -> None:
        pool = relay.handler.reinject_pool
        pool.MAX_IDLE_SECONDS = 0.05
        assert (await relay.send(SENDER, [RECIPIENT], data))[0] == 250
        assert len(pool) == 1
        (_, pooled), = pool._idle
        await asyncio.sleep(0.3)
        assert len(pool) == 0 and not pooled.is_connected

    run_filter("outgoing", scenario)


def test_reinjection_connection_is_not_reused_after_a_refusal(run_filter, mails):
    data = mails.make("encrypted", from_addr=SENDER, to_addr=RECIPIENT)

    async def scenario(relay: Relay) -> None:
        assert (await relay.send(SENDER, [RECIPIENT], data))[0] == 554
        relay.postfix.reply = "250 OK"
        assert (await relay.send(SENDER, [RECIPIENT], data))[0] == 250
        assert relay.postfix.connections == 2
        assert len(relay.handler.reinject_pool) == 1

    run_filter("outgoing", scenario, postfix_reply="554 5.7.1 Refused by policy")


def test_a_pooled_reinjection_connection_that_was_closed_is_replaced(run_filter, mails):
    data = mails.make("encrypted", from_addr=SENDER, to_addr=RECIPIENT)

    async def scenario(relay: Relay) -> None:
        assert (await relay.send(SENDER, [RECIPIENT], data))[0] == 250
        (_, pooled), = relay.handler.reinject_pool._idle
        pooled.close()  # as if Postfix had gone away meanwhile
        await asyncio.sleep(0.05)
        assert (await relay.send(SENDER, [RECIPIENT], data))[0] == 250
        assert len(relay.postfix.received) == 2

    run_filter("outgoing", scenario)


def test_reinjection_connection_failure_defers_with_451(run_filter, mails, caplog):
    data = mails.make("encrypted", from_addr=SENDER, to_addr=RECIPIENT)

    async def scenario(relay: Relay) -> None:
        code, _ = await relay.send(SENDER, [RECIPIENT], data)
        assert code == 451

    with caplog.at_level(logging.WARNING):
        run_filter("outgoing", scenario, postfix_down=True)
    assert any("reinjection" in message for message in caplog.messages)


def test_incoming_mail_with_other_envelope_sender_is_reinjected_with_null_sender(
    run_filter, mails, dkim_domains
):
    data = dkim_domains.sign(
        mails.make("encrypted", from_addr="alice@remote.example", to_addr=RECIPIENT), REMOTE
    )

    async def scenario(relay: Relay) -> None:
        assert (await relay.send("srs=forwarder@lists.example", [RECIPIENT], data))[0] == 250
        assert relay.postfix.received == [Received("<>", [RECIPIENT], data)]

    run_filter("incoming", scenario)


def test_incoming_bounce_from_null_sender_is_accepted(run_filter, mails, dkim_domains):
    data = mails.make("mailer-daemon", from_addr="MAILER-DAEMON@remote.example", to_addr=RECIPIENT)
    data = dkim_domains.sign(data, REMOTE)

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


def test_incoming_cleartext_to_recipients_without_marker_is_accepted(
    run_filter, mails, make_config, dkim_domains
):
    legacy = f"legacyuser@{DOMAIN}"
    for addr in (legacy, RECIPIENT):
        user = make_config().get_user(addr)
        user.set_password("{SHA512-CRYPT}$6$salt$hash")
        user.allow_incoming_cleartext()
    data = dkim_domains.sign(mails.make("plain", from_addr="alice@remote.example", to_addr=legacy), REMOTE)

    async def scenario(relay: Relay) -> None:
        assert (await relay.send("alice@remote.example", [legacy, RECIPIENT], data))[0] == 250
        assert relay.postfix.received == [Received("alice@remote.example", [legacy, RECIPIENT], data)]

    run_filter("incoming", scenario)


def test_incoming_encrypted_mail_reaches_strict_recipients(run_filter, mails, make_config, dkim_domains):
    strict = f"strictuser@{DOMAIN}"
    make_config().get_user(strict).set_password("{SHA512-CRYPT}$6$salt$hash")
    data = dkim_domains.sign(
        mails.make("encrypted", from_addr="alice@remote.example", to_addr=strict), REMOTE
    )

    async def scenario(relay: Relay) -> None:
        assert (await relay.send("alice@remote.example", [strict], data))[0] == 250
        assert relay.postfix.received[0].data == data

    run_filter("incoming", scenario)


def test_incoming_mail_is_parsed_for_dkim_once_in_the_mime_thread_and_cleartext_not_at_all(
    run_filter, mails, make_config, dkim_domains, monkeypatch
):
    import threading

    strict = f"strictuser@{DOMAIN}"
    make_config().get_user(strict).set_password("{SHA512-CRYPT}$6$salt$hash")
    encrypted = dkim_domains.sign(mails.make("encrypted", from_addr="alice@remote.example", to_addr=strict), REMOTE)
    cleartext = dkim_domains.sign(mails.make("plain", from_addr="alice@remote.example", to_addr=strict), REMOTE)
    threads: list[str] = []
    real_prepare = DkimVerifier.prepare

    def recording_prepare(self, data):
        threads.append(threading.current_thread().name)
        return real_prepare(self, data)

    monkeypatch.setattr(DkimVerifier, "prepare", recording_prepare)

    async def scenario(relay: Relay) -> None:
        assert (await relay.send("alice@remote.example", [strict], encrypted))[0] == 250
        assert (await relay.send("alice@remote.example", [strict], cleartext))[0] == 523

    run_filter("incoming", scenario)
    assert len(threads) == 1 and threads[0].startswith("mimecheck")


def test_a_message_dkim_cannot_parse_beforehand_is_still_judged_by_the_dkim_check(
    run_filter, mails, make_config, dkim_domains, monkeypatch
):
    strict = f"strictuser@{DOMAIN}"
    make_config().get_user(strict).set_password("{SHA512-CRYPT}$6$salt$hash")
    data = dkim_domains.sign(mails.make("encrypted", from_addr="alice@remote.example", to_addr=strict), REMOTE)
    calls: list[int] = []
    real_prepare = DkimVerifier.prepare

    def failing_first(self, data):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("parse failed")
        return real_prepare(self, data)

    monkeypatch.setattr(DkimVerifier, "prepare", failing_first)

    async def scenario(relay: Relay) -> None:
        assert (await relay.send("alice@remote.example", [strict], data))[0] == 250

    run_filter("incoming", scenario)
    assert len(calls) == 2  # the check parsed it again itself


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


# --- rate limit ----------------------------------------------------------


def test_sender_over_the_rate_limit_is_deferred_with_450_and_retry_time(run_filter, mails):
    clock_now = 1_800_000_000.0
    limiter = RateLimiter(per_minute=60, burst=2, clock=lambda: clock_now)
    data = mails.make("encrypted", from_addr=SENDER, to_addr=RECIPIENT)

    async def scenario(relay: Relay) -> None:
        assert (await relay.send(SENDER, [RECIPIENT], data))[0] == 250
        assert (await relay.send(SENDER, [RECIPIENT], data))[0] == 250
        code, message = await relay.send(SENDER, [RECIPIENT], data)
        assert code == 450
        assert message == f"4.7.1: Too much mail from {SENDER}, rate limited until 2027-01-15T08:00:01Z"
        assert len(relay.postfix.received) == 2

    run_filter("outgoing", scenario, ratelimiter=limiter)


def test_rate_limit_comes_from_the_config(config):
    handler = FilterHandler(config, "outgoing")
    assert handler.ratelimiter.interval == 60 / config.max_user_send_per_minute


# --- DKIM on incoming mail -----------------------------------------------


def test_incoming_unsigned_encrypted_mail_is_refused_with_554(run_filter, mails):
    data = mails.make("encrypted", from_addr=f"alice@{REMOTE}", to_addr=RECIPIENT)

    async def scenario(relay: Relay) -> None:
        assert await relay.send(f"alice@{REMOTE}", [RECIPIENT], data) == (
            554,
            "5.7.1 No DKIM signature found",
        )
        assert relay.postfix.received == []

    run_filter("incoming", scenario)


def test_incoming_mail_signed_by_another_domain_is_refused_with_554(run_filter, mails, dkim_domains):
    data = dkim_domains.sign(mails.make("encrypted", from_addr=f"alice@{REMOTE}"), "spammer.example")

    async def scenario(relay: Relay) -> None:
        assert await relay.send(f"alice@{REMOTE}", [RECIPIENT], data) == (
            554,
            "5.7.1 No valid DKIM signature found",
        )

    run_filter("incoming", scenario)


def test_incoming_cleartext_is_refused_before_dkim_is_checked(run_filter, mails, make_config, dkim_domains):
    strict = f"strictuser@{DOMAIN}"
    make_config().get_user(strict).set_password("{SHA512-CRYPT}$6$salt$hash")
    data = mails.make("plain", from_addr=f"alice@{REMOTE}", to_addr=strict)

    async def scenario(relay: Relay) -> None:
        assert (await relay.send(f"alice@{REMOTE}", [strict], data))[0] == 523
        assert dkim_domains.queries == []

    run_filter("incoming", scenario)


def test_outgoing_mail_is_not_dkim_checked(config):
    assert FilterHandler(config, "outgoing").dkim is None


def test_dkim_is_on_by_default_in_incoming_mode(config, monkeypatch):
    monkeypatch.delenv("CHATMAIL_SKIP_DKIM", raising=False)
    assert FilterHandler(config, "incoming").dkim is not None


def test_skipping_dkim_needs_the_environment_variable_and_warns(config, monkeypatch, caplog):
    monkeypatch.setenv("CHATMAIL_SKIP_DKIM", "1")
    with caplog.at_level(logging.WARNING):
        handler = FilterHandler(config, "incoming")
    assert handler.dkim is None
    assert "DKIM verification DISABLED" in caplog.text


# --- robustness ------------------------------------------------------------


async def raw_session(port: int, lines: list[bytes]) -> list[bytes]:
    """Send raw lines one by one and collect each reply line (connection may close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies = [await reader.readline()]
    try:
        for line in lines:
            writer.write(line)
            await writer.drain()
            replies.append(await asyncio.wait_for(reader.readline(), 5))
    finally:
        writer.close()
    return replies


def test_overlong_command_line_gets_an_error_and_the_filter_keeps_serving(run_filter, mails):
    data = mails.make("encrypted", from_addr=SENDER, to_addr=RECIPIENT)

    async def scenario(relay: Relay) -> None:
        replies = await raw_session(relay.port, [b"MAIL FROM:<" + b"a" * 5000 + b"@x>\r\n", b"NOOP\r\n"])
        assert replies[1].startswith(b"500")
        assert (await relay.send(SENDER, [RECIPIENT], data))[0] == 250

    run_filter("outgoing", scenario)


def test_garbage_commands_get_errors_and_the_filter_keeps_serving(run_filter, mails):
    data = mails.make("encrypted", from_addr=SENDER, to_addr=RECIPIENT)

    async def scenario(relay: Relay) -> None:
        replies = await raw_session(
            relay.port, [b"\xff\xfe\x00garbage\r\n", b"RCPT TO:<x@y>\r\n", b"DATA\r\n"]
        )
        assert all(reply[:1] in (b"5", b"") for reply in replies[1:])
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        await reader.readline()
        writer.write(b"EHLO x\r\nMAIL FROM:<" + SENDER.encode() + b">\r\n")
        writer.close()  # hang up mid-transaction
        assert (await relay.send(SENDER, [RECIPIENT], data))[0] == 250

    run_filter("outgoing", scenario)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"no headers at all",
        b'From: <sender@chat.example.org>\r\nContent-Type: multipart/encrypted; boundary="b\r\n\r\n--b\r\n',
        b"From: <sender@chat.example.org>\r\nContent-Type: multipart/encrypted; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n--b\r\n"
        b"Content-Type: application/octet-stream\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n\r\n"
        b"wcBMA////truncated\r\n-----END PGP MESSAGE-----\r\n--b--\r\n",
        b"From: =?utf-8?b?broken?= <\xff\xfe@chat.example.org>\r\n\r\n\xff" * 50,
    ],
    ids=["empty", "headerless", "broken-multipart", "truncated-packet", "binary-junk"],
)
def test_malformed_messages_get_a_clear_refusal_and_the_filter_keeps_serving(run_filter, mails, body):
    data = mails.make("encrypted", from_addr=SENDER, to_addr=RECIPIENT)

    async def scenario(relay: Relay) -> None:
        code, _ = await relay.send(SENDER, [RECIPIENT], body)
        assert code in (500, 523)
        assert relay.postfix.received == []
        assert (await relay.send(SENDER, [RECIPIENT], data))[0] == 250

    run_filter("outgoing", scenario)


def test_truncated_openpgp_packet_is_not_encrypted(mails):
    from chatmaild.mimecheck import check_outgoing

    data = mails.make("encrypted", from_addr=SENDER, to_addr=RECIPIENT)
    armored = data[data.index(b"-----BEGIN PGP MESSAGE-----") :]
    lines = armored.split(b"\r\n")
    # Drop the second-to-last line of base64 and the checksum: the SEIPD packet ends early.
    end = lines.index(b"-----END PGP MESSAGE-----")
    truncated = data.replace(b"\r\n".join(lines[end - 3 : end]), b"\r\n".join(lines[end - 3 : end - 2]))
    assert truncated != data
    assert check_outgoing(SENDER, [RECIPIENT], truncated).reply.startswith("523")


# --- the client's address (XFORWARD) and IP-literal senders -------------------


async def send_as_postfix(relay: Relay, client_addr: str | None, mail_from: str, rcpt_tos: list[str], data: bytes):
    """One transaction as Postfix's before-queue proxy runs it: EHLO, XFORWARD, MAIL, RCPT, DATA."""
    smtp = await relay.client()
    try:
        response = await smtp.ehlo()
        assert "XFORWARD ADDR" in response.message
        if client_addr is not None:
            reply = await smtp.execute_command(b"XFORWARD", b"NAME=spike.porcupine.org", f"ADDR={client_addr}".encode())
            assert reply.code == 250
        return await transaction(smtp, mail_from, rcpt_tos, data)
    finally:
        smtp.close()


def _strict_user(make_config, addr: str = f"strictuser@{DOMAIN}") -> str:
    make_config().get_user(addr).set_password("{SHA512-CRYPT}$6$salt$hash")
    return addr


@pytest.mark.parametrize(("literal", "client"), [("[192.0.2.1]", "192.0.2.1"), ("[IPv6:2001:db8::1]", "IPV6:2001:DB8::1")])
def test_ip_literal_sender_is_accepted_from_the_client_with_that_address(run_filter, mails, make_config, literal, client):
    strict = _strict_user(make_config)
    sender = f"x@{literal}"
    data = mails.make("encrypted", from_addr=sender, to_addr=strict)

    async def scenario(relay: Relay) -> None:
        assert (await send_as_postfix(relay, client, sender, [strict], data))[0] == 250
        assert len(relay.postfix.received) == 1

    run_filter("incoming", scenario)


@pytest.mark.parametrize("client", [None, "192.0.2.99", "127.0.0.1", "[UNAVAILABLE]"])
@pytest.mark.parametrize("kind", ["encrypted", "securejoin-vc"])
def test_ip_literal_sender_from_another_or_unknown_client_is_refused(run_filter, mails, make_config, client, kind):
    strict = _strict_user(make_config)
    data = mails.make(kind, from_addr="x@[192.0.2.1]", to_addr=strict, subject="Buy now")

    async def scenario(relay: Relay) -> None:
        code, message = await send_as_postfix(relay, client, "x@[192.0.2.1]", [strict], data)
        assert code == 554 and "domain literal" in message
        assert relay.postfix.received == []

    run_filter("incoming", scenario)


def test_ip_literal_sender_is_checked_even_with_dkim_switched_off(make_config, mails, monkeypatch):
    monkeypatch.setenv("CHATMAIL_SKIP_DKIM", "1")
    handler = FilterHandler(make_config(), "incoming")
    verdict = handler.judge("x@[192.0.2.1]", [RECIPIENT], mails.make("securejoin-vc", from_addr="x@[192.0.2.1]"))
    assert asyncio.run(handler.check_origin(b"", verdict, None)).startswith("554 5.7.1")
    assert asyncio.run(handler.check_origin(b"", verdict, "192.0.2.1")) is None


def test_xforward_inside_a_transaction_is_refused(run_filter):
    async def scenario(relay: Relay) -> None:
        smtp = await relay.client()
        await smtp.ehlo()
        await smtp.mail(SENDER)
        reply = await smtp.execute_command(b"XFORWARD", b"ADDR=192.0.2.1")
        assert reply.code == 503
        bad = await smtp.execute_command(b"RSET")
        assert bad.code == 250
        assert (await smtp.execute_command(b"XFORWARD", b"BOGUS=1")).code == 501
        assert (await smtp.execute_command(b"XFORWARD", b"ADDR=IPV6+3A2001+3Adb8+3A+3A1")).code == 250
        smtp.close()

    run_filter("incoming", scenario)


def test_xforward_values_are_xtext_decoded():
    from chatmaild.filtermail import parse_xforward

    assert parse_xforward("ADDR=IPV6+3A2001+3Adb8+3A+3A1 NAME=[UNAVAILABLE]") == {
        "ADDR": "IPV6:2001:db8::1",
        "NAME": "[UNAVAILABLE]",
    }
    assert parse_xforward("ADDR") is None
    assert parse_xforward("") is None


# --- address extensions --------------------------------------------------------


@pytest.mark.parametrize(
    ("rcpt", "mailbox"),
    [
        ("bob+x@d.example", "bob@d.example"),
        ("Bob+x+y@D.example", "bob@d.example"),
        ("bob@d.example", "bob@d.example"),
        ("+bob@d.example", "+bob@d.example"),
        ("bob+@d.example", "bob@d.example"),
        ("postmaster+x@d.example", "postmaster@d.example"),
        ("MAILER-DAEMON+x@d.example", "mailer-daemon@d.example"),
    ],
)
def test_recipient_extensions_are_cut_off_as_postfix_does(rcpt, mailbox):
    from chatmaild.filtermail import mailbox_of_recipient

    assert mailbox_of_recipient(rcpt) == mailbox


def test_reserved_local_parts_are_never_split_whatever_the_delimiter():
    from chatmaild.filtermail import mailbox_of_recipient

    assert mailbox_of_recipient("mailer-daemon@d.example", "-") == "mailer-daemon@d.example"
    assert mailbox_of_recipient("Double-Bounce@d.example", "-") == "double-bounce@d.example"
    assert mailbox_of_recipient("bob-x@d.example", "+-") == "bob@d.example"


@pytest.mark.parametrize("rcpt", ["strictuser+x@", "STRICTUSER+anything@", "strictuser+@"])
def test_cleartext_to_an_extension_of_a_strict_recipient_is_refused(run_filter, mails, make_config, dkim_domains, rcpt):
    _strict_user(make_config)
    rcpt += DOMAIN
    data = dkim_domains.sign(mails.make("plain", from_addr=f"alice@{REMOTE}", to_addr=rcpt), REMOTE)

    async def scenario(relay: Relay) -> None:
        assert (await relay.send(f"alice@{REMOTE}", [rcpt], data))[0] == 523
        assert relay.postfix.received == []

    run_filter("incoming", scenario)


def test_cleartext_to_an_unknown_local_recipient_is_refused(run_filter, mails, dkim_domains):
    data = dkim_domains.sign(mails.make("plain", from_addr=f"alice@{REMOTE}", to_addr=f"nobody@{DOMAIN}"), REMOTE)

    async def scenario(relay: Relay) -> None:
        assert (await relay.send(f"alice@{REMOTE}", [f"nobody@{DOMAIN}"], data))[0] == 523

    run_filter("incoming", scenario)


def test_cleartext_to_an_extension_of_a_legacy_recipient_is_accepted(run_filter, mails, make_config, dkim_domains):
    user = make_config().get_user(f"legacyuser@{DOMAIN}")
    user.set_password("{SHA512-CRYPT}$6$salt$hash")
    user.allow_incoming_cleartext()
    rcpt = f"legacyuser+news@{DOMAIN}"
    data = dkim_domains.sign(mails.make("plain", from_addr=f"alice@{REMOTE}", to_addr=rcpt), REMOTE)

    async def scenario(relay: Relay) -> None:
        assert (await relay.send(f"alice@{REMOTE}", [rcpt], data))[0] == 250

    run_filter("incoming", scenario)


# --- the event loop stays free while a message is checked ------------------------


def test_a_second_session_is_served_while_a_message_is_being_checked(run_filter, mails, monkeypatch):
    """The first message's check is held in its worker; the second session must still complete."""
    import threading

    from chatmaild import mimecheck

    started, release = threading.Event(), threading.Event()
    real_check = mimecheck.check_outgoing

    def held_check(mail_from, rcpt_tos, data, *passthrough):
        if b"HOLD-THIS-ONE" in data:
            started.set()
            release.wait(5)
        return real_check(mail_from, rcpt_tos, data, *passthrough)

    monkeypatch.setattr(mimecheck, "check_outgoing", held_check)
    held = mails.make("encrypted", from_addr=SENDER, to_addr=RECIPIENT, subject="HOLD-THIS-ONE")
    other = mails.make("encrypted", from_addr=SENDER, to_addr=RECIPIENT)

    async def scenario(relay: Relay) -> None:
        first = asyncio.create_task(relay.send(SENDER, [RECIPIENT], held))
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, started.wait, 5)
        assert await relay.send(SENDER, [RECIPIENT], other) == (250, "OK")
        assert not first.done(), "the held check must still be running"
        release.set()
        assert await first == (250, "OK")
        assert [r.data for r in relay.postfix.received] == [filtermail.hide_subject(other),
                                                            filtermail.hide_subject(held)]

    try:
        run_filter("outgoing", scenario)
    finally:
        release.set()


def test_a_queue_write_error_of_the_reinjection_is_not_worded_like_an_unreachable_filter(run_filter, mails):
    data = mails.make("encrypted", from_addr=SENDER, to_addr=RECIPIENT)

    async def scenario(relay: Relay) -> None:
        code, message = await relay.send(SENDER, [RECIPIENT], data)
        assert (code, message) == (451, "4.3.0 Error: the relay could not queue the message, try again later")

    run_filter("outgoing", scenario, postfix_reply="451 4.3.0 Error: queue file write error")


async def stalling_reinjection_listener(received: list[bytes], quits: list[bool]) -> asyncio.Server:
    """A reinjection listener that queues on DATA but answers QUIT only after a long pause,
    as a busy Postfix on a loaded host may."""

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 reinject ESMTP\r\n")
        in_data = False
        body = b""
        while line := await reader.readline():
            if in_data:
                if line == b".\r\n":
                    in_data = False
                    received.append(body)
                    writer.write(b"250 2.0.0 Ok: queued\r\n")
                else:
                    body += line
            elif line.upper().startswith(b"EHLO"):
                writer.write(b"250-reinject\r\n250 8BITMIME\r\n")
            elif line.upper().startswith(b"DATA"):
                in_data = True
                writer.write(b"354 go ahead\r\n")
            elif line.upper().startswith(b"QUIT"):
                quits.append(True)
                await asyncio.sleep(30)
                writer.write(b"221 bye\r\n")
            else:
                writer.write(b"250 Ok\r\n")
            await writer.drain()
        writer.close()

    return await asyncio.start_server(session, "127.0.0.1", 0)


def test_the_client_is_answered_as_soon_as_postfix_queued_the_message_not_after_quit(make_config, mails):
    """Between Postfix's "queued" and our 250 nothing may wait: if filtermail dies in that
    window, the client sees a 4xx, resends, and the message arrives twice."""
    data = mails.make("encrypted", from_addr=SENDER, to_addr=RECIPIENT)

    async def main() -> float:
        received: list[bytes] = []
        quits: list[bool] = []
        listener = await stalling_reinjection_listener(received, quits)
        config = make_config(postfix_reinject_port=listener.sockets[0].getsockname()[1])
        handler = FilterHandler(config, "outgoing")
        async with listener:
            started = asyncio.get_running_loop().time()
            reply = await asyncio.wait_for(handler.process(SENDER, [RECIPIENT], data), 10)
            elapsed = asyncio.get_running_loop().time() - started
            assert reply == "250 OK"
            assert len(received) == 1
            # The session waits in the pool for the next message: no QUIT, nothing after "queued".
            assert len(handler.reinject_pool) == 1 and quits == []
            await handler.close_reinjections()
            assert len(handler.reinject_pool) == 0
        return elapsed

    assert asyncio.run(main()) < 2.0


def test_outgoing_cleartext_to_a_passthrough_recipient_is_reinjected_and_to_others_refused(run_filter, mails):
    contact = f"privacy@{DOMAIN}"
    data = mails.make("plain", SENDER, contact)

    async def scenario(relay: Relay) -> None:
        assert await relay.send(SENDER, [contact], data) == (250, "OK")
        code, _ = await relay.send(SENDER, [contact, RECIPIENT], data)
        assert code == 523
        assert [r.rcpt_tos for r in relay.postfix.received] == [[contact]]

    run_filter("outgoing", scenario, passthrough_recipients=contact)


def test_every_subject_field_of_the_header_is_hidden_folded_lines_and_all():
    message = (b"From: <a@x.org>\r\nsubject: one\r\n  folded on\r\n\tand on\r\nTo: <b@y.org>\r\n"
               b"SUBJECT : two\r\n\r\nSubject: in the body\r\n\r\nSubject: still body\r\n")
    assert filtermail.hide_subject(message) == (
        b"From: <a@x.org>\r\nSubject: [...]\r\nTo: <b@y.org>\r\nSubject: [...]\r\n\r\n"
        b"Subject: in the body\r\n\r\nSubject: still body\r\n")


def test_a_message_without_a_subject_or_without_a_body_keeps_its_bytes():
    for message in (b"From: <a@x.org>\r\nTo: <b@y.org>\r\n\r\nSubject: body\r\n",
                    b"From: <a@x.org>\nX-Subject: no\n\nbody\n", b"", b"\r\n\r\nSubject: body"):
        assert filtermail.hide_subject(message) == message
    assert filtermail.hide_subject(b"Subject: only a header") == b"Subject: [...]"
    assert filtermail.hide_subject(b"From: a\nSubject: bare LF\n\nSubject: x\n") == (
        b"From: a\nSubject: [...]\n\nSubject: x\n")


def test_incoming_mail_whose_key_is_cached_is_verified_in_the_mime_thread(
    run_filter, mails, make_config, dkim_domains, monkeypatch
):
    import threading

    strict = f"strictuser@{DOMAIN}"
    make_config().get_user(strict).set_password("{SHA512-CRYPT}$6$salt$hash")
    signed = [
        dkim_domains.sign(mails.make("encrypted", from_addr="alice@remote.example", to_addr=strict), REMOTE)
        for _ in range(3)
    ]
    forged = signed[2].replace(b"Subject:", b"Subject: x", 1)
    full_checks: list[str] = []
    cached_checks: list[str] = []
    real_check, real_cached = DkimVerifier.check, DkimVerifier.verify_cached

    async def recording_check(self, *args, **kwargs):
        full_checks.append(threading.current_thread().name)
        return await real_check(self, *args, **kwargs)

    def recording_cached(self, *args, **kwargs):
        cached_checks.append(threading.current_thread().name)
        return real_cached(self, *args, **kwargs)

    monkeypatch.setattr(DkimVerifier, "check", recording_check)
    monkeypatch.setattr(DkimVerifier, "verify_cached", recording_cached)

    async def scenario(relay: Relay) -> None:
        for data in signed[:2]:
            assert (await relay.send("alice@remote.example", [strict], data))[0] == 250
        assert (await relay.send("alice@remote.example", [strict], forged))[0] == 554
        assert len(relay.postfix.received) == 2

    run_filter("incoming", scenario)
    # The first message fetches the key (full check); the second is verified with the
    # cached key in the MIME thread alone; the forged one fails there and gets the full check.
    assert len(full_checks) == 2
    assert len(cached_checks) == 3 and all(name.startswith("mimecheck") for name in cached_checks)


@pytest.mark.parametrize("local_part_limit", [0, 8])
def test_envelope_addresses_are_parsed_exactly_as_aiosmtpd_parses_them(local_part_limit):
    arguments = [
        "", "<>", "<a@b.example>", "a@b.example", "  <a@b.example> SIZE=10", "<a@b.example> NOTIFY=NEVER",
        '<"quoted local"@b.example>', '"two@at"@signs.example', "<a(comment)@b.example>", "<@route:a@b.example>",
        "<a@[192.0.2.1]>", "<a@[IPv6:2001:db8::1]>", "<müller@bücher.example>", "<a@b.example", "a@b.example>",
        "<<a@b.example>>", "no-at-sign", "<a b@c.example>", "<verylonglocalpart@b.example>", "<.a@b.example>",
        "<a..b@c.example>", "<a@>", "<@b.example>", "\x00<a@b.example>", "<a@b.example>\x00", ":", "<",
        "<\"unterminated@b.example>", "a@b.example trailing words", "<a@b.example>rest",
    ]
    ours = ParameterTolerantSMTP(FakePostfix())
    theirs = SMTP(FakePostfix())
    ours.local_part_limit = theirs.local_part_limit = local_part_limit

    def outcome(server: SMTP, arg: str) -> object:
        try:
            return server._getaddr(arg)
        except Exception as exc:  # "<" alone: the email package itself raises IndexError
            return type(exc)

    for arg in arguments:
        assert outcome(ours, arg) == outcome(theirs, arg), arg
