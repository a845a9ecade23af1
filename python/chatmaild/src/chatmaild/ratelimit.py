"""Per-sender send rate limit for outgoing mail (GCRA).

A user may send ``burst`` messages at once and then ``per_minute`` messages
per minute. The generic cell rate algorithm needs one number per sender,
the "theoretical arrival time" (TAT) of their next message, instead of a
window of timestamps, so memory does not grow with the allowed rate.

A sender whose TAT lies in the past is indistinguishable from one never
seen, so such entries are dropped in periodic sweeps: memory is bounded
by the number of senders active within the last burst period, not by the
number of senders since start-up.
"""

from __future__ import annotations

import datetime
import logging
import math
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# Never sweep more often than this many decisions, so that a sweep (linear
# in the number of tracked senders) costs O(1) per decision on average.
MIN_SWEEP_INTERVAL = 1024


class RateLimiter:
    """Keyed GCRA: ``check(key)`` says whether one more message is allowed now.

    ``clock`` returns seconds since the epoch. It is wall-clock time rather
    than a monotonic clock because the refusal names the time at which
    sending is possible again; tests inject a fake.
    """

    def __init__(self, per_minute: int, burst: int, clock: Callable[[], float] = time.time) -> None:
        if per_minute <= 0 or burst <= 0:
            raise ValueError(f"rate limit needs positive values, got {per_minute}/min and burst {burst}")
        self.interval = 60.0 / per_minute
        # Delay variation tolerance: how far ahead of "now" the TAT may run
        # and still let a message through; (burst - 1) intervals allows
        # exactly ``burst`` messages at the same instant.
        self.tolerance = self.interval * (burst - 1)
        self.clock = clock
        self._tat: dict[str, float] = {}
        self._checks_since_sweep = 0
        self._sweep_after = MIN_SWEEP_INTERVAL

    def __len__(self) -> int:
        """Number of senders currently tracked (for tests of the memory bound)."""
        return len(self._tat)

    def check(self, key: str) -> float | None:
        """Count one message of ``key``; None if allowed, else the clock time it will be allowed."""
        now = self.clock()
        self._maybe_sweep(now)
        tat = max(self._tat.get(key, now), now)
        allowed_at = tat - self.tolerance
        if now < allowed_at:
            return allowed_at
        self._tat[key] = tat + self.interval
        return None

    def _maybe_sweep(self, now: float) -> None:
        self._checks_since_sweep += 1
        if self._checks_since_sweep < self._sweep_after:
            return
        self._checks_since_sweep = 0
        before = len(self._tat)
        self._tat = {key: tat for key, tat in self._tat.items() if tat > now}
        # The next sweep waits as many decisions as entries survived, so the
        # table holds at most the live senders plus one sweep interval.
        self._sweep_after = max(MIN_SWEEP_INTERVAL, len(self._tat))
        log.debug("rate limiter forgot %d idle senders, tracks %d", before - len(self._tat), len(self._tat))


def format_until(timestamp: float) -> str:
    """An epoch time as ISO 8601 in UTC for the refusal reply, rounded up to the second.

    Rounded up, not down, so that a client retrying at the named time is let through.
    """
    moment = datetime.datetime.fromtimestamp(math.ceil(timestamp), datetime.UTC)
    return moment.isoformat().replace("+00:00", "Z")
