from __future__ import annotations

import pytest

from chatmaild.ratelimit import MIN_SWEEP_INTERVAL, RateLimiter, format_until


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_burst_is_allowed_at_once_then_refused():
    limiter = RateLimiter(per_minute=60, burst=10, clock=FakeClock())
    assert [limiter.check("a@x") for _ in range(10)] == [None] * 10
    assert limiter.check("a@x") is not None


def test_after_the_burst_one_message_per_interval_is_allowed():
    clock = FakeClock()
    limiter = RateLimiter(per_minute=60, burst=10, clock=clock)
    for _ in range(10):
        limiter.check("a@x")
    until = limiter.check("a@x")
    assert until == pytest.approx(clock.now + 1.0)
    clock.now = until
    assert limiter.check("a@x") is None
    assert limiter.check("a@x") is not None


def test_a_refused_attempt_does_not_extend_the_wait():
    clock = FakeClock()
    limiter = RateLimiter(per_minute=6, burst=1, clock=clock)
    assert limiter.check("a@x") is None
    first = limiter.check("a@x")
    assert limiter.check("a@x") == first


def test_senders_are_limited_independently():
    limiter = RateLimiter(per_minute=60, burst=1, clock=FakeClock())
    assert limiter.check("a@x") is None
    assert limiter.check("a@x") is not None
    assert limiter.check("b@x") is None


def test_full_burst_is_available_again_after_idling():
    clock = FakeClock()
    limiter = RateLimiter(per_minute=60, burst=5, clock=clock)
    for _ in range(5):
        limiter.check("a@x")
    clock.now += 5.0
    assert [limiter.check("a@x") for _ in range(5)] == [None] * 5


def test_idle_senders_are_forgotten_so_memory_stays_bounded():
    clock = FakeClock()
    limiter = RateLimiter(per_minute=60, burst=10, clock=clock)
    for i in range(MIN_SWEEP_INTERVAL * 3):
        limiter.check(f"user{i}@x")
        clock.now += 0.01
    # Each sender's TAT is one interval (1 s) after its message: only the
    # senders of roughly the last second, plus those since the last sweep, remain.
    assert len(limiter) <= MIN_SWEEP_INTERVAL + 100
    clock.now += 10
    for _ in range(MIN_SWEEP_INTERVAL * 2):
        limiter.check("same@x")
        clock.now += 1
    assert len(limiter) == 1


@pytest.mark.parametrize(("per_minute", "burst"), [(0, 10), (60, 0), (-1, 1)])
def test_non_positive_limits_are_refused(per_minute, burst):
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(per_minute, burst)


def test_retry_time_is_rounded_up_to_the_second_in_utc():
    assert format_until(1_800_000_000.2) == "2027-01-15T08:00:01Z"
