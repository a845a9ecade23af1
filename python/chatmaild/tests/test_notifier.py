"""The push notification queue against a real local HTTP server."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from chatmaild.notifier import DEADLINE_SECONDS, Notifier, QueueItem

ADDR = "someone01@chat.example.org"
FULL_SCHEDULE = [8, 64, 512, 2048, 3600, 3600, 3600, 3600, 968]
"""The waits between attempts when the proxy never answers: the last attempt is at 5 hours."""


class PushProxy:
    """A stand-in notification proxy answering with scripted status codes."""

    def __init__(self, statuses: list[int] | None = None, default: int = 200) -> None:
        self.statuses = list(statuses or [])
        self.default = default
        self.bodies: list[bytes] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.gate: asyncio.Event | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.read())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
        finally:
            self.in_flight -= 1
        return web.Response(status=self.statuses.pop(0) if self.statuses else self.default)


class Clock:
    """A fake time source whose sleep only advances the clock and records the delay."""

    def __init__(self, start: float = 1_700_000_000) -> None:
        self.time = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.time

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.time += delay


def run(proxy: PushProxy, body: Callable[[str], Awaitable[None]]) -> None:
    async def main() -> None:
        app = web.Application()
        app.router.add_post("/notify", proxy.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        try:
            await body(f"http://{host}:{port}/notify")
        finally:
            await runner.cleanup()

    asyncio.run(main())


def make_notifier(tmp_path: Path, url: str, clock: Clock, dropped: list | None = None, **kw) -> Notifier:
    drop = (lambda addr, token: dropped.append((addr, token))) if dropped is not None else (lambda a, t: None)
    return Notifier(tmp_path / "queue", url, drop, now=clock.now, sleep=clock.sleep, **kw)


def queue_files(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "queue").iterdir())


def test_a_delivered_notification_posts_the_bare_token_and_deletes_its_file(tmp_path):
    proxy, clock = PushProxy(), Clock()

    async def body(url: str) -> None:
        notifier = make_notifier(tmp_path, url, clock)
        await notifier.start()
        notifier.enqueue(ADDR, "openpgp:abc\ndef")
        await notifier.wait_idle()
        await notifier.stop()

    run(proxy, body)
    assert proxy.bodies == [b"openpgp:abc\ndef"]
    assert queue_files(tmp_path) == []
    assert clock.sleeps == []


def test_status_410_removes_the_token_from_the_account(tmp_path):
    proxy, clock, dropped = PushProxy(default=410), Clock(), []

    async def body(url: str) -> None:
        notifier = make_notifier(tmp_path, url, clock, dropped)
        await notifier.start()
        notifier.enqueue(ADDR, "dead-token")
        await notifier.wait_idle()
        await notifier.stop()

    run(proxy, body)
    assert dropped == [(ADDR, "dead-token")]
    assert queue_files(tmp_path) == []


def test_server_errors_are_retried_on_the_schedule_then_dropped(tmp_path, caplog):
    proxy, clock, dropped = PushProxy(default=500), Clock(), []

    async def body(url: str) -> None:
        notifier = make_notifier(tmp_path, url, clock, dropped)
        await notifier.start()
        notifier.enqueue(ADDR, "SECRET-TOKEN-VALUE")
        await notifier.wait_idle()
        await notifier.stop()

    with caplog.at_level(logging.WARNING, logger="chatmaild.notifier"):
        run(proxy, body)
    assert clock.sleeps == FULL_SCHEDULE
    assert len(proxy.bodies) == len(FULL_SCHEDULE) + 1
    assert dropped == []
    assert queue_files(tmp_path) == []
    assert "exceeded its deadline" in caplog.text
    assert "SECRET-TOKEN-VALUE" not in caplog.text


def test_a_retry_succeeds_after_a_failure(tmp_path):
    proxy, clock = PushProxy(statuses=[500, 404]), Clock()

    async def body(url: str) -> None:
        notifier = make_notifier(tmp_path, url, clock)
        await notifier.start()
        notifier.enqueue(ADDR, "token")
        await notifier.wait_idle()
        await notifier.stop()

    run(proxy, body)
    assert clock.sleeps == [8, 64]
    assert len(proxy.bodies) == 3
    assert queue_files(tmp_path) == []


def test_an_unreachable_proxy_is_retried_like_an_error(tmp_path):
    clock = Clock()

    async def body(url: str) -> None:
        notifier = make_notifier(tmp_path, "http://127.0.0.1:9/notify", clock, timeout=5)
        await notifier.start()
        notifier.enqueue(ADDR, "token")
        await notifier.wait_idle()
        await notifier.stop()

    run(PushProxy(), body)
    assert clock.sleeps == FULL_SCHEDULE


def test_persisted_items_are_resent_after_a_restart_within_their_deadline(tmp_path):
    proxy, clock = PushProxy(), Clock()
    queue = tmp_path / "queue"
    queue.mkdir()
    fresh = queue / uuid.uuid4().hex
    fresh.write_text(f"{ADDR}\n{int(clock.time) - 100}\nfresh-token")
    old = queue / uuid.uuid4().hex
    old.write_text(f"{ADDR}\n{int(clock.time) - DEADLINE_SECONDS + 10}\nold-token")

    async def body(url: str) -> None:
        notifier = make_notifier(tmp_path, url, clock)
        await notifier.start()
        await notifier.wait_idle()
        await notifier.stop()

    run(proxy, body)
    assert sorted(proxy.bodies) == [b"fresh-token", b"old-token"]
    assert queue_files(tmp_path) == []


def test_an_old_item_is_given_up_at_its_deadline(tmp_path):
    proxy, clock = PushProxy(default=500), Clock()
    queue = tmp_path / "queue"
    queue.mkdir()
    (queue / uuid.uuid4().hex).write_text(f"{ADDR}\n{int(clock.time) - DEADLINE_SECONDS + 10}\ntoken")

    async def body(url: str) -> None:
        notifier = make_notifier(tmp_path, url, clock)
        await notifier.start()
        await notifier.wait_idle()
        await notifier.stop()

    run(proxy, body)
    assert clock.sleeps == [8, 2]  # the last wait is cut to end on the deadline
    assert len(proxy.bodies) == 3
    assert queue_files(tmp_path) == []


def test_spurious_queue_files_are_deleted_with_a_warning(tmp_path, caplog):
    queue = tmp_path / "queue"
    queue.mkdir()
    (queue / f"{uuid.uuid4().hex}.tmp-1234").write_text(f"{ADDR}\n1\nhalf")
    (queue / "notes.txt").write_text("hello")
    (queue / uuid.uuid4().hex).write_text("only one line")
    (queue / uuid.uuid4().hex).write_text(f"{ADDR}\nnot-a-time\ntoken")
    (queue / uuid.uuid4().hex).write_bytes(b"\xff\xfe\n1\ntoken")
    good = queue / uuid.uuid4().hex
    good.write_text(f"{ADDR}\n1700000000\ntoken\nwith newline")
    notifier = make_notifier(tmp_path, "http://127.0.0.1:9/notify", Clock())
    with caplog.at_level(logging.WARNING, logger="chatmaild.notifier"):
        items = notifier.load_persisted()
    assert items == [QueueItem(good, ADDR, 1700000000, "token\nwith newline")]
    assert queue_files(tmp_path) == [good.name]
    assert caplog.text.count("spurious queue item") == 5


def test_enqueued_items_are_on_disk_before_enqueue_returns(tmp_path):
    clock = Clock()

    async def body(url: str) -> None:
        notifier = make_notifier(tmp_path, url, clock)
        await notifier.start()
        notifier.enqueue(ADDR, "tok\nen")
        [name] = queue_files(tmp_path)
        assert (tmp_path / "queue" / name).read_text() == f"{ADDR}\n{int(clock.time)}\ntok\nen"
        await notifier.stop()  # crash before sending: the file stays

    run(PushProxy(), body)
    assert len(queue_files(tmp_path)) == 1


def test_the_number_of_concurrent_requests_is_bounded(tmp_path):
    proxy, clock = PushProxy(), Clock()

    async def body(url: str) -> None:
        proxy.gate = asyncio.Event()
        notifier = make_notifier(tmp_path, url, clock, max_in_flight=4)
        await notifier.start()
        for i in range(20):
            notifier.enqueue(ADDR, f"token-{i}")
        for _ in range(100):
            await asyncio.sleep(0.01)
            if proxy.in_flight == 4:
                break
        await asyncio.sleep(0.05)
        proxy.gate.set()
        await notifier.wait_idle()
        await notifier.stop()

    run(proxy, body)
    assert proxy.max_in_flight == 4
    assert len(proxy.bodies) == 20
    assert queue_files(tmp_path) == []


class StampingProxy(PushProxy):
    """Records the injected clock's time of every request."""

    def __init__(self, clock: Clock, **kw) -> None:
        super().__init__(**kw)
        self.clock = clock
        self.times: list[float] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.times.append(self.clock.now())
        return await super().handle(request)


def test_a_failing_notification_is_retried_until_five_hours_and_not_after(tmp_path):
    clock = Clock()
    proxy = StampingProxy(clock, default=503)
    start = clock.now()

    async def body(url: str) -> None:
        notifier = make_notifier(tmp_path, url, clock)
        await notifier.start()
        notifier.enqueue(ADDR, "token")
        await notifier.wait_idle()
        await notifier.stop()

    run(proxy, body)
    offsets = [t - start for t in proxy.times]
    assert offsets[-1] == DEADLINE_SECONDS
    assert max(b - a for a, b in zip(offsets, offsets[1:])) <= 3600
    assert len(offsets) <= 12  # a peer that stays down is not hammered
    assert queue_files(tmp_path) == []


def test_a_proxy_back_after_three_hours_still_gets_the_notification(tmp_path):
    clock = Clock()
    proxy = StampingProxy(clock, statuses=[503] * 7)
    start = clock.now()

    async def body(url: str) -> None:
        notifier = make_notifier(tmp_path, url, clock)
        await notifier.start()
        notifier.enqueue(ADDR, "token")
        await notifier.wait_idle()
        await notifier.stop()

    run(proxy, body)
    assert 3 * 3600 <= proxy.times[-1] - start < DEADLINE_SECONDS
    assert len(proxy.bodies) == 8
    assert queue_files(tmp_path) == []


def test_a_notification_resumed_after_its_deadline_is_dropped_unsent(tmp_path):
    clock = Clock()
    queue = tmp_path / "queue"
    queue.mkdir()
    (queue / uuid.uuid4().hex).write_bytes(f"{ADDR}\n{int(clock.now()) - DEADLINE_SECONDS - 1}\ntoken".encode())
    proxy = PushProxy()

    async def body(url: str) -> None:
        notifier = make_notifier(tmp_path, url, clock)
        await notifier.start()
        await notifier.wait_idle()
        await notifier.stop()

    run(proxy, body)
    assert proxy.bodies == []
    assert queue_files(tmp_path) == []
