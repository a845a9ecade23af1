"""Push notifications: a persistent queue of HTTP POSTs to the notification proxy.

When a message arrives for an account, every device token the account
registered is sent, as the bare request body, to the Delta Chat
notification proxy, which wakes the device through Apple, Google or other
push services. Tokens are opaque to the relay: clients encrypt them to the
proxy's key, so the relay cannot tell which platform or push service a
device uses, and the proxy learns nothing but "wake this device now".

Nothing may get lost when the service or the machine restarts while the
proxy is unreachable, so each notification is first written to its own
file in the queue directory (``addr``, the time of the event and the token,
on three lines) and only then acknowledged to Dovecot. The file is deleted
when the proxy answered, or when it is given up. Failed requests are
retried after 8, 64, 512 and 2048 seconds, then hourly, and a last time
when five hours have passed; a notification older than that is useless
(the user has opened the app since) and is dropped. The
proxy answers 410 for a token that will never work again; it is then
removed from the account, so dead devices do not cost a request per
message forever.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from . import metrics
from .filedict import write_bytes_atomic

if TYPE_CHECKING:
    # aiohttp is imported when the first notification is sent: the daemon starts on
    # demand (socket activation), and most starts only answer a lookup.
    import aiohttp

log = logging.getLogger(__name__)

RETRY_DELAYS_SECONDS = (0, 8, 64, 512, 2048)
"""Waits before the first attempts; after them, RETRY_INTERVAL_SECONDS until the deadline."""
RETRY_INTERVAL_SECONDS = 3600
DEADLINE_SECONDS = 5 * 3600
REQUEST_TIMEOUT_SECONDS = 60
MAX_IN_FLIGHT = 16
_ITEM_NAME = re.compile(r"^[0-9a-f]{32}$")


@dataclasses.dataclass(frozen=True)
class QueueItem:
    """One pending notification and the file that keeps it across restarts."""

    path: Path
    addr: str
    start_ts: int
    token: str

    def serialize(self) -> bytes:
        return f"{self.addr}\n{self.start_ts}\n{self.token}".encode()

    @classmethod
    def parse(cls, path: Path, data: bytes) -> QueueItem:
        """Read an item file; raise ValueError naming the problem if it is not one."""
        parts = data.decode("utf-8").split("\n", 2)
        if len(parts) != 3:
            raise ValueError("expected three lines: address, time, token")
        addr, start_ts, token = parts
        if "@" not in addr:
            raise ValueError(f"not an address: {addr!r}")
        if not token:
            raise ValueError("empty token")
        return cls(path, addr, int(start_ts), token)


def retry_delays() -> Iterator[float]:
    """The waits before each attempt: the fast ones, then hourly without end (the deadline ends it)."""
    yield from RETRY_DELAYS_SECONDS
    while True:
        yield RETRY_INTERVAL_SECONDS


class Notifier:
    """Sends queued notifications with a bounded number of concurrent requests.

    ``now`` and ``sleep`` are injectable so tests can run the retry schedule
    without waiting. ``drop_token(addr, token)`` is called when the proxy
    says a token is dead. ``counters`` counts notifications queued, sent,
    failed and dropped (:mod:`chatmaild.metrics`; default: in memory only).
    """

    def __init__(
        self,
        queue_dir: Path,
        url: str,
        drop_token: Callable[[str, str], None],
        now: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        max_in_flight: int = MAX_IN_FLIGHT,
        timeout: float = REQUEST_TIMEOUT_SECONDS,
        counters: metrics.Counters | None = None,
    ) -> None:
        self.counters = counters or metrics.Counters(None)
        self.queue_dir = Path(queue_dir)
        self.url = url
        self.drop_token = drop_token
        self.now = now
        self.sleep = sleep
        self.timeout = timeout
        self._slots = asyncio.Semaphore(max_in_flight)
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Resume every notification left on disk (the HTTP session opens with the first request)."""
        self.queue_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for item in self.load_persisted():
            self._spawn(item)

    async def stop(self) -> None:
        """Stop sending; queued files stay on disk for the next start."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def pending(self) -> bool:
        """True while a notification waits to be sent or retried."""
        return bool(self._tasks)

    def _http(self) -> aiohttp.ClientSession:
        """The HTTP session, opened on first use."""
        if self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self._session

    async def wait_idle(self) -> None:
        """Wait until no notification is pending (for tests and orderly shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def load_persisted(self) -> list[QueueItem]:
        """Read the queue directory; delete files that are not valid items."""
        items = []
        for path in sorted(self.queue_dir.iterdir()):
            if not path.is_file():
                log.warning("unexpected entry in the notification queue left alone: %s", path)
                continue
            try:
                if not _ITEM_NAME.match(path.name):
                    raise ValueError("not a queue item name")
                items.append(QueueItem.parse(path, path.read_bytes()))
            except (ValueError, UnicodeDecodeError) as exc:
                log.warning("spurious queue item %s deleted: %s", path, exc)
                path.unlink(missing_ok=True)
        if items:
            log.info("resuming %s queued notification(s)", len(items))
        return items

    def enqueue(self, addr: str, token: str) -> None:
        """Persist a notification for ``token`` and start sending it.

        Returns once the item is on disk, so the caller may acknowledge the
        event; the request itself happens in the background.
        """
        path = self.queue_dir / uuid.uuid4().hex
        item = QueueItem(path, addr, int(self.now()), token)
        write_bytes_atomic(path, item.serialize(), fsync=True)
        self.counters.inc("chatmail_pushes_queued_total")
        self._spawn(item)

    def _spawn(self, item: QueueItem) -> None:
        task = asyncio.get_running_loop().create_task(self._deliver(item))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, item: QueueItem) -> None:
        deadline = item.start_ts + DEADLINE_SECONDS
        try:
            for delay in retry_delays():
                remaining = deadline - self.now()
                if remaining < 0 or (delay and remaining == 0):
                    break
                # The last wait is cut short, so that one attempt falls on the deadline.
                delay = min(delay, remaining)
                if delay:
                    await self.sleep(delay)
                if await self._attempt(item):
                    item.path.unlink(missing_ok=True)
                    return
            log.error("notification for %s exceeded its deadline, dropped", item.addr)
            item.path.unlink(missing_ok=True)
            self.counters.inc("chatmail_pushes_dropped_total", outcome="deadline")
        except asyncio.CancelledError:
            raise
        except Exception:
            # The file stays: the next start retries it.
            log.exception("notification for %s failed unexpectedly", item.addr)

    async def _attempt(self, item: QueueItem) -> bool:
        """POST the token once; True if the item is finished (sent or token dead)."""
        import aiohttp

        async with self._slots:
            try:
                async with self._http().post(self.url, data=item.token.encode("utf-8")) as response:
                    status = response.status
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.warning("notification request for %s failed: %s", item.addr, type(exc).__name__)
                self.counters.inc("chatmail_push_attempts_failed_total")
                return False
        if status == 200:
            self.counters.inc("chatmail_pushes_sent_total")
            return True
        if status == 410:
            log.info("notification proxy reports a dead device token of %s; removing it", item.addr)
            self.drop_token(item.addr, item.token)
            self.counters.inc("chatmail_pushes_dropped_total", outcome="dead_token")
            return True
        log.warning("notification request for %s failed with HTTP %s", item.addr, status)
        self.counters.inc("chatmail_push_attempts_failed_total")
        return False
