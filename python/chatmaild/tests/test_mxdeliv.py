from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiosmtpd.smtp import SMTP
from conftest import DOMAIN
from test_filtermail import FakePostfix, Received

from chatmaild.dkimcheck import DkimVerifier
from chatmaild.filtermail import FilterHandler, serve
from chatmaild.mxdeliv import make_app

RECIPIENT = f"recipient@{DOMAIN}"
ALICE = "alice@remote.example"


@pytest.fixture
def run_http(make_config, dkim_domains) -> Callable[..., None]:
    """Run ``scenario(client, postfix)`` against the HTTP receiver of an incoming filter."""

    def run(scenario: Callable[[TestClient, FakePostfix], Awaitable[None]], **overrides: object) -> None:
        async def main() -> None:
            loop = asyncio.get_running_loop()
            postfix = FakePostfix()
            postfix_server = await loop.create_server(lambda: SMTP(postfix), "127.0.0.1", 0)
            config = make_config(
                postfix_reinject_port_incoming=postfix_server.sockets[0].getsockname()[1], **overrides
            )
            handler = FilterHandler(config, "incoming", dkim=DkimVerifier(lookup_txt=dkim_domains.lookup_txt))
            async with postfix_server, TestClient(TestServer(make_app(handler))) as client:
                try:
                    await scenario(client, postfix)
                finally:
                    await handler.close_reinjections()

        asyncio.run(main())

    return run


def test_signed_encrypted_mail_is_delivered_with_200(run_http, mails, dkim_domains):
    data = dkim_domains.sign(mails.make("encrypted", from_addr=ALICE, to_addr=RECIPIENT), "remote.example")

    async def scenario(client: TestClient, postfix: FakePostfix) -> None:
        headers = [("X-MAIL-FROM", ALICE), ("X-MAIL-TO", RECIPIENT), ("X-MAIL-TO", f"other@{DOMAIN}")]
        response = await client.post("/mxdeliv", data=data, headers=headers)
        assert (response.status, await response.text()) == (200, "250 OK\r\n")
        assert postfix.received == [Received(ALICE, [RECIPIENT, f"other@{DOMAIN}"], data)]

    run_http(scenario)


def test_missing_sender_header_means_the_null_sender(run_http, mails, dkim_domains):
    data = dkim_domains.sign(mails.make("encrypted", from_addr=ALICE, to_addr=RECIPIENT), "remote.example")

    async def scenario(client: TestClient, postfix: FakePostfix) -> None:
        response = await client.post("/any/path", data=data, headers={"X-MAIL-TO": RECIPIENT})
        assert response.status == 200
        assert postfix.received[0].mail_from == "<>"

    run_http(scenario)


def test_unsigned_mail_is_refused_with_400_and_the_smtp_line(run_http, mails):
    data = mails.make("encrypted", from_addr=ALICE, to_addr=RECIPIENT)

    async def scenario(client: TestClient, postfix: FakePostfix) -> None:
        response = await client.post("/mxdeliv", data=data, headers={"X-MAIL-TO": RECIPIENT})
        assert (response.status, await response.text()) == (400, "554 5.7.1 No DKIM signature found\r\n")
        assert postfix.received == []

    run_http(scenario)


def test_cleartext_to_a_strict_recipient_is_refused_with_523(run_http, mails, make_config, dkim_domains):
    strict = f"strictuser@{DOMAIN}"
    make_config().get_user(strict).set_password("{SHA512-CRYPT}$6$salt$hash")
    data = dkim_domains.sign(mails.make("plain", from_addr=ALICE, to_addr=strict), "remote.example")

    async def scenario(client: TestClient, postfix: FakePostfix) -> None:
        response = await client.post("/mxdeliv", data=data, headers={"X-MAIL-TO": strict})
        assert response.status == 400
        assert (await response.text()).startswith("523 Encryption Needed")

    run_http(scenario)


def test_message_over_the_size_limit_is_refused_with_413(run_http, mails):
    data = mails.make("encrypted", from_addr=ALICE, to_addr=RECIPIENT)

    async def scenario(client: TestClient, postfix: FakePostfix) -> None:
        response = await client.post("/mxdeliv", data=data, headers={"X-MAIL-TO": RECIPIENT})
        assert (response.status, await response.text()) == (413, "552 Message exceeds maximum size\r\n")

        async def chunks():  # no Content-Length: the limit must hold while streaming too
            for _ in range(4):
                yield data

        response = await client.post("/mxdeliv", data=chunks(), headers={"X-MAIL-TO": RECIPIENT})
        assert response.status == 413

    run_http(scenario, max_message_size=len(data) // 2)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_methods_other_than_post_get_405(run_http, method):
    async def scenario(client: TestClient, postfix: FakePostfix) -> None:
        response = await client.request(method, "/mxdeliv")
        assert response.status == 405

    run_http(scenario)


def test_request_without_recipients_is_refused(run_http, mails):
    async def scenario(client: TestClient, postfix: FakePostfix) -> None:
        response = await client.post("/mxdeliv", data=mails.make("encrypted", from_addr=ALICE))
        assert response.status == 400
        assert (await response.text()).startswith("554 5.5.1")

    run_http(scenario)


def test_garbage_body_is_refused_and_the_receiver_keeps_serving(run_http, mails, dkim_domains):
    good = dkim_domains.sign(mails.make("encrypted", from_addr=ALICE, to_addr=RECIPIENT), "remote.example")

    async def scenario(client: TestClient, postfix: FakePostfix) -> None:
        for junk in (b"", b"\x00\xff" * 1000, b"From: <>\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n"):
            response = await client.post("/mxdeliv", data=junk, headers={"X-MAIL-TO": RECIPIENT})
            assert response.status == 400
            assert (await response.text())[:1] == "5"
        response = await client.post("/mxdeliv", data=good, headers={"X-MAIL-TO": RECIPIENT})
        assert response.status == 200

    run_http(scenario)


def test_incoming_filter_serves_smtp_and_http_on_one_loop(make_config, mails, dkim_domains, monkeypatch):
    """serve() in incoming mode listens on both ports; SMTP and HTTP refuse unsigned mail alike."""
    import aiohttp
    import aiosmtplib
    from test_filtermail import free_port

    monkeypatch.delenv("CHATMAIL_SKIP_DKIM", raising=False)
    smtp_port, http_port = free_port(), free_port()
    config = make_config(filtermail_smtp_port_incoming=smtp_port, filtermail_http_port_incoming=http_port)
    data = mails.make("encrypted", from_addr=ALICE, to_addr=RECIPIENT)

    async def main() -> None:
        task = asyncio.create_task(serve(config, "incoming"))
        for _ in range(100):
            try:
                smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=smtp_port, start_tls=False)
                await smtp.connect()
                break
            except OSError:
                await asyncio.sleep(0.05)
        with pytest.raises(aiosmtplib.SMTPDataError) as excinfo:
            await smtp.sendmail(ALICE, [RECIPIENT], data)
        assert excinfo.value.code == 554
        smtp.close()
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{http_port}/mxdeliv"
            async with session.post(url, data=data, headers={"X-MAIL-TO": RECIPIENT}) as response:
                assert response.status == 400
                assert (await response.text()).startswith("554 5.7.1")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


@pytest.mark.parametrize("literal", ["[192.0.2.1]", "[IPv6:2001:db8::1]"])
def test_ip_literal_sender_is_refused_over_https(run_http, mails, literal):
    data = mails.make("encrypted", from_addr=f"x@{literal}", to_addr=RECIPIENT)

    async def scenario(client: TestClient, postfix: FakePostfix) -> None:
        response = await client.post("/mxdeliv", data=data, headers={"X-MAIL-TO": RECIPIENT})
        assert response.status == 400
        assert (await response.text()).startswith("554 5.7.1 Invalid FROM domain literal")
        assert postfix.received == []

    run_http(scenario)


def test_an_aborted_upload_logs_one_line_and_no_traceback(make_config, caplog):
    """Served by mxdeliv.start, as in production (aiohttp's test server cancels handlers instead)."""
    import logging

    from test_filtermail import free_port

    from chatmaild import mxdeliv

    port = free_port()

    async def main() -> None:
        handler = FilterHandler(make_config(), "incoming", dkim=DkimVerifier(lookup_txt=None))
        runner = await mxdeliv.start(handler, "127.0.0.1", port)
        try:
            for _ in range(3):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(
                    b"POST /mxdeliv HTTP/1.1\r\nHost: x\r\nX-MAIL-TO: " + RECIPIENT.encode()
                    + b"\r\nContent-Length: 100000\r\n\r\nFrom: <a@b.example>\r\n"
                )
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.close()
            for _ in range(100):  # the server notices the hang-up asynchronously
                if len([r for r in caplog.records if r.name.startswith("chatmaild.mxdeliv")]) >= 3:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)
        finally:
            await runner.cleanup()

    with caplog.at_level(logging.DEBUG):
        asyncio.run(main())
    ours = [r for r in caplog.records if r.name.startswith("chatmaild.mxdeliv")]
    assert [r.getMessage() for r in ours] == ["delivery aborted by the client before the end of the message"] * 3
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


LAZY_RECEIVER_CHILD = """
import asyncio, socket, sys
from chatmaild.config import read_config
from chatmaild.filtermail import serve

async def main():
    config = read_config(sys.argv[1])
    task = asyncio.create_task(serve(config, "incoming"))
    await asyncio.sleep(0.5)
    before = "aiohttp" in sys.modules
    reader, writer = await asyncio.open_connection("127.0.0.1", config.filtermail_http_port_incoming)
    writer.write(b"POST /mxdeliv HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 0\\r\\nConnection: close\\r\\n\\r\\n")
    status = (await asyncio.wait_for(reader.readline(), 30)).decode().strip()
    writer.close()
    print(before, status, "aiohttp" in sys.modules)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

asyncio.run(main())
"""


def test_the_incoming_filter_loads_the_http_receiver_with_the_first_http_connection(make_config):
    """aiohttp costs a third of the incoming filter's memory: a relay no one delivers to over
    HTTPS never loads it, and the first connection, made before, is still served."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from test_filtermail import free_port

    config = make_config(filtermail_smtp_port_incoming=free_port(), filtermail_http_port_incoming=free_port())
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "CHATMAIL_SKIP_DKIM": "1"}
    out = subprocess.run([sys.executable, "-c", LAZY_RECEIVER_CHILD, str(config.path)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "HTTP/1.1", "400", "Bad", "Request", "True"], out.stdout + out.stderr
