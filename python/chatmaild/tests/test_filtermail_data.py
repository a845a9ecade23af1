"""filtermail reads DATA in chunks, not line by line: it must answer exactly as aiosmtpd does.

Each case is sent, byte for byte, to a plain aiosmtpd server and to
filtermail's SMTP class, both with the same limits, and the replies and the
received messages are compared. A short line limit makes the line-length
rules reachable with small inputs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiosmtpd.smtp import SMTP
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatmaild import filtermail
from chatmaild.filtermail import ParameterTolerantSMTP, data_limit_refusal

LINE_LIMIT = 24
SIZE_LIMIT = 200


class Recorder:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append(envelope.original_content)
        return "250 OK"


class PlainSMTP(SMTP):
    line_length_limit = LINE_LIMIT


class FilterSMTP(ParameterTolerantSMTP):
    line_length_limit = LINE_LIMIT


async def converse(server_class: type[SMTP], chunks: Sequence[bytes]) -> tuple[bytes, list[bytes]]:
    """Send ``chunks`` (with a pause after each) and return every reply byte and the messages."""
    recorder = Recorder()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: server_class(recorder, data_size_limit=SIZE_LIMIT, enable_SMTPUTF8=True, hostname="t"),
        "127.0.0.1",
        0,
    )
    port = server.sockets[0].getsockname()[1]
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        received: list[bytes] = []

        async def read_all() -> None:
            try:
                while chunk := await reader.read(65536):
                    received.append(chunk)
            except ConnectionError:
                pass

        reading = asyncio.create_task(read_all())
        try:
            for chunk in [*chunks, b"QUIT\r\n"]:
                writer.write(chunk)
                await writer.drain()
                await asyncio.sleep(0.005)
        except ConnectionError:
            pass  # the server hung up (too many bogus commands): what it said still counts
        await asyncio.wait_for(reading, 5)
        replies = b"".join(received)
        writer.close()
    return replies, recorder.messages


def conversation(body_chunks: Sequence[bytes], then: bytes = b"") -> list[bytes]:
    head = b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n"
    return [head, *body_chunks[:-1], body_chunks[-1] + then] if body_chunks else [head, then]


def both(chunks: Sequence[bytes]) -> tuple[tuple[bytes, list[bytes]], tuple[bytes, list[bytes]]]:
    async def main():
        return await converse(PlainSMTP, chunks), await converse(FilterSMTP, chunks)

    return asyncio.run(main())


def assert_same(chunks: Sequence[bytes]) -> tuple[bytes, list[bytes]]:
    plain, ours = both(chunks)
    assert ours == plain
    return ours


def test_a_plain_message_with_dot_stuffing_arrives_as_aiosmtpd_gives_it():
    replies, messages = assert_same(conversation([b"Subject: x\r\n\r\n..dot\r\n.\r\n"]))
    assert messages == [b"Subject: x\r\n\r\n.dot\r\n"]
    assert replies.count(b"250 OK") >= 1


def test_an_empty_message_ends_at_the_first_dot_line():
    assert_same(conversation([b".\r\n"]))


def test_the_end_of_data_split_over_several_packets_is_found():
    assert_same(conversation([b"a\r\nb\r", b"\n", b".", b"\r", b"\n"]))


def test_commands_sent_right_after_the_data_are_still_answered():
    replies, messages = assert_same(
        conversation([b"one\r\n.\r\nMAIL FROM:<e@f.example>\r\nRCPT TO:<g@h.example>\r\nDATA\r\ntwo\r\n.\r\n"])
    )
    assert messages == [b"one\r\n", b"two\r\n"]


def test_a_line_longer_than_the_limit_is_refused_with_500_after_the_end_of_data():
    replies, messages = assert_same(conversation([b"short\r\n" + b"x" * LINE_LIMIT + b"\r\nmore\r\n.\r\n"]))
    assert b"500 Line too long" in replies and messages == []


def test_a_line_of_exactly_the_limit_passes():
    assert_same(conversation([b"x" * (LINE_LIMIT - 2) + b"\r\n.\r\n"]))


def test_bare_line_feeds_and_carriage_returns_belong_to_the_line():
    assert_same(conversation([b"a\nb\nc\nd\ne\nf\ng\nh\ni\nj\nk\nl\nm\n\r\n.\r\n"]))
    assert_same(conversation([b"a\rb\rc\r\r\n\n.\n.\r\n.\r\n"]))


def test_too_much_data_is_refused_with_552():
    replies, messages = assert_same(conversation([b"0123456789\r\n" * 30 + b".\r\n"]))
    assert b"552" in replies and messages == []


def test_whichever_limit_is_broken_first_decides_the_reply():
    within = b"0123456789\r\n" * 15
    assert_same(conversation([within + b"y" * 40 + b"\r\n" + b"z\r\n" * 100 + b".\r\n"]))
    assert_same(conversation([b"0123456789\r\n" * 20 + b"y" * 40 + b"\r\n.\r\n"]))


message_bytes = st.lists(
    st.sampled_from([b"a", b"bcdefgh", b".", b"..", b"\r", b"\n", b"\r\n", b"\r\n.", b"x" * 23]), max_size=60
).map(b"".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=message_bytes, cut=st.integers(min_value=1, max_value=50))
def test_any_message_gets_the_reply_and_content_aiosmtpd_gives(body, cut):
    data = body + b"\r\n.\r\n"
    chunks = [data[i : i + cut] for i in range(0, len(data), cut)]
    assert_same(conversation(chunks))


def test_twenty_megabytes_of_short_lines_are_judged_without_a_step_per_line(monkeypatch):
    """Counted, not timed: one search per window of the message, however many lines it has."""
    searches = []
    real = filtermail._long_run

    class Counting:
        def __init__(self, pattern):
            self.pattern = pattern

        def search(self, *args):
            searches.append(args[1:])
            return self.pattern.search(*args)

    monkeypatch.setattr(filtermail, "_long_run", lambda *args: Counting(real(*args)))
    body = b"a\r\n" * 7_000_000
    windows = -(-len(body) // filtermail.WINDOW_BYTES)
    assert data_limit_refusal(body, 30_000_000, 1001) is None
    assert len(searches) == windows
    searches.clear()
    assert data_limit_refusal(body + b"c" * 1000 + b"\r\n", 30_000_000, 1001) is not None
    assert len(searches) == windows


def test_long_lines_are_found_across_search_windows_and_with_bare_line_feeds():
    window = filtermail.WINDOW_BYTES
    prefixes = (
        b"a\r\n" * (window // 3),  # the long line crosses a window's end
        b"a\n\r\n" * (window // 4),  # bare line feeds elsewhere in the message
        b"\r\n" * (window // 2),  # the long line starts exactly at a window
        b"\n" + b"\r\n" * (window // 2),  # ... right after a CRLF that a window boundary splits
    )
    for prefix in prefixes:
        for length, refused in ((999, False), (1000, True)):
            body = prefix + b"x" * length + b"\r\n" + b"b\r\n" * (window // 3)
            verdict = data_limit_refusal(body, 0, 1001)
            assert (verdict is not None) == refused, (len(prefix), length)
