from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiosmtplib.protocol
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatmaild.reinject import (
    RecipientsRefused,
    ReinjectClient,
    Refused,
    _dot_stuffed,
    normalize_line_endings,
)

TIMEOUT = 5.0


class StubPostfix:
    """A scripted SMTP listener: records every line it reads and answers per command.

    With ``hold_until_data`` (and PIPELINING offered), it answers nothing
    before it has read the DATA command, as only a pipelining client can
    get along with; ``rcpt_reply(address)`` answers each RCPT.
    """

    def __init__(
        self,
        extensions: tuple[str, ...] = ("PIPELINING", "SIZE 10240000", "8BITMIME"),
        mail_reply: bytes = b"250 2.1.0 Ok",
        rcpt_reply: Callable[[bytes], bytes] = lambda address: b"250 2.1.5 Ok",
        data_reply: bytes = b"354 End data with <CR><LF>.<CR><LF>",
        final_reply: bytes = b"250 2.0.0 Ok: queued as 1234",
        hold_until_data: bool = False,
    ) -> None:
        self.extensions = extensions
        self.mail_reply, self.rcpt_reply, self.data_reply, self.final_reply = (
            mail_reply,
            rcpt_reply,
            data_reply,
            final_reply,
        )
        self.hold_until_data = hold_until_data
        self.lines: list[bytes] = []
        self.bodies: list[bytes] = []

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 stub ESMTP\r\n")
        held: list[bytes] = []
        while line := await reader.readline():
            self.lines.append(line)
            verb = line[:4].upper()
            if verb == b"EHLO":
                names = [b"stub", *(e.encode() for e in self.extensions)]
                writer.write(b"".join(b"250-" + n + b"\r\n" for n in names[:-1]) + b"250 " + names[-1] + b"\r\n")
            elif verb == b"MAIL":
                held.append(self.mail_reply)
            elif verb == b"RCPT":
                held.append(self.rcpt_reply(line[8:].strip()))
            elif verb == b"DATA":
                held.append(self.data_reply)
                writer.write(b"".join(reply + b"\r\n" for reply in held))
                held = []
                if self.data_reply.startswith(b"354"):
                    body = b""
                    while (chunk := await reader.readline()) != b".\r\n":
                        body += chunk
                    self.bodies.append(body)
                    writer.write(self.final_reply + b"\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                held.append(b"250 Ok")
            if held and not self.hold_until_data:
                writer.write(b"".join(reply + b"\r\n" for reply in held))
                held = []
            await writer.drain()
        writer.close()


def run_with(stub: StubPostfix, scenario: Callable[[ReinjectClient], object]) -> None:
    async def main() -> None:
        server = await asyncio.start_server(stub.session, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            client = await ReinjectClient.connect("127.0.0.1", port, TIMEOUT)
            try:
                await asyncio.wait_for(scenario(client), TIMEOUT)  # type: ignore[arg-type]
            finally:
                client.close()

    asyncio.run(main())


MESSAGE = b"From: <a@example.org>\r\nSubject: x\r\n\r\n.leading dot\r\nbody\r\n"


def test_envelope_and_data_go_out_in_one_round_trip_when_postfix_offers_pipelining():
    stub = StubPostfix(hold_until_data=True)

    async def scenario(client: ReinjectClient) -> None:
        assert await client.sendmail("a@example.org", ["b@example.org", "c@example.org"], MESSAGE) == {}

    run_with(stub, scenario)
    assert stub.lines[1:5] == [
        b"MAIL FROM:<a@example.org> SIZE=%d\r\n" % len(MESSAGE),
        b"RCPT TO:<b@example.org>\r\n",
        b"RCPT TO:<c@example.org>\r\n",
        b"DATA\r\n",
    ]
    assert stub.bodies == [MESSAGE.replace(b"\r\n.", b"\r\n..")]


def test_without_pipelining_commands_go_one_at_a_time_and_other_recipients_still_get_it():
    stub = StubPostfix(
        extensions=("8BITMIME",),
        rcpt_reply=lambda address: b"550 5.1.1 unknown" if address == b"<x@example.org>" else b"250 Ok",
    )

    async def scenario(client: ReinjectClient) -> None:
        refused = await client.sendmail("", ["x@example.org", "b@example.org"], MESSAGE)
        assert refused == {"x@example.org": (550, "5.1.1 unknown")}

    run_with(stub, scenario)
    assert stub.lines[1] == b"MAIL FROM:<>\r\n"  # the null sender, and no SIZE where not offered
    assert len(stub.bodies) == 1


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_refused_sender_raises_with_postfixs_reply_and_sends_no_body(pipelining):
    extensions = ("PIPELINING",) if pipelining else ()
    stub = StubPostfix(extensions=extensions, mail_reply=b"553 5.7.1 no", data_reply=b"503 5.5.1 need RCPT")

    async def scenario(client: ReinjectClient) -> None:
        with pytest.raises(Refused) as excinfo:
            await client.sendmail("a@example.org", ["b@example.org"], MESSAGE)
        assert (excinfo.value.code, excinfo.value.message) == (553, "5.7.1 no")

    run_with(stub, scenario)
    assert stub.bodies == []


@pytest.mark.parametrize("pipelining", [True, False])
def test_all_recipients_refused_raises_the_first_refusal(pipelining):
    extensions = ("PIPELINING",) if pipelining else ()
    replies = {b"<b@example.org>": b"550 5.1.1 no b", b"<c@example.org>": b"450 4.2.0 later c"}
    stub = StubPostfix(extensions=extensions, rcpt_reply=replies.__getitem__, data_reply=b"554 5.5.1 no valid rcpt")

    async def scenario(client: ReinjectClient) -> None:
        with pytest.raises(RecipientsRefused) as excinfo:
            await client.sendmail("a@example.org", ["b@example.org", "c@example.org"], MESSAGE)
        assert (excinfo.value.code, excinfo.value.message) == (550, "5.1.1 no b")

    run_with(stub, scenario)
    assert stub.bodies == []


def test_a_refused_message_raises_with_the_multi_line_reply():
    stub = StubPostfix(final_reply=b"554-5.7.1 first line\r\n554 5.7.1 second line")

    async def scenario(client: ReinjectClient) -> None:
        with pytest.raises(Refused) as excinfo:
            await client.sendmail("a@example.org", ["b@example.org"], MESSAGE)
        assert (excinfo.value.code, excinfo.value.message) == (554, "5.7.1 first line\n5.7.1 second line")

    run_with(stub, scenario)


@pytest.mark.parametrize("address", ["a@example.org\r\nRCPT TO:<evil@example.org>", "a\x00@example.org"])
def test_an_address_that_could_break_the_command_line_is_refused_before_anything_is_sent(address):
    stub = StubPostfix()

    async def scenario(client: ReinjectClient) -> None:
        with pytest.raises(ValueError):
            await client.sendmail(address, ["b@example.org"], MESSAGE)
        with pytest.raises(ValueError):
            await client.sendmail("a@example.org", [address], MESSAGE)

    run_with(stub, scenario)
    assert [line[:4] for line in stub.lines] == [b"EHLO"]


def test_a_listener_that_does_not_speak_smtp_is_a_connection_error():
    async def main() -> None:
        async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"HTTP/1.1 400 Bad Request\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(session, "127.0.0.1", 0)
        async with server:
            with pytest.raises(ConnectionError):
                await ReinjectClient.connect("127.0.0.1", server.sockets[0].getsockname()[1], TIMEOUT)

    asyncio.run(main())


def test_a_closed_session_is_not_connected_and_refuses_to_send():
    stub = StubPostfix()

    async def scenario(client: ReinjectClient) -> None:
        client.close()
        assert not client.is_connected
        with pytest.raises(ConnectionError):
            await client.sendmail("a@example.org", ["b@example.org"], MESSAGE)

    run_with(stub, scenario)


def aiosmtplib_payload(message: bytes) -> tuple[int, bytes]:
    """What aiosmtplib 5 sent for a message: its SIZE and its DATA payload."""
    normalized = aiosmtplib.protocol.normalize_message_line_endings(message)
    return len(normalized), aiosmtplib.protocol.PERIOD_REGEX.sub(b"..", normalized) + b".\r\n"


CORPUS = [
    b"",
    b".",
    b"..\r\n",
    b"a",
    b"\r",
    b"\n",
    b"\r\n",
    b"\n\r",
    b"\r\r\n",
    b"\n\r\n",
    b"a\rb\nc\r\nd",
    b".a\n.b\r.c\r\n.d",
    b"line\r\n.\r\nmore\r\n",
    b"\r\n.\r\n",
    MESSAGE,
    b"x" * 5000 + b"\n." + b"\r" * 3,
]


@pytest.mark.parametrize("message", CORPUS)
def test_the_bytes_sent_are_those_aiosmtplib_sent(message):
    size, payload = aiosmtplib_payload(message)
    normalized = normalize_line_endings(message)
    assert (len(normalized), _dot_stuffed(normalized)) == (size, payload)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"a", b"\x00", b" "]), max_size=40).map(b"".join))
def test_any_mix_of_line_endings_and_dots_is_sent_as_aiosmtplib_sent_it(message):
    normalized = normalize_line_endings(message)
    assert (len(normalized), _dot_stuffed(normalized)) == aiosmtplib_payload(message)
