"""The rate limiter's schedule, checked on a clock the test moves (no sleeping)."""

from __future__ import annotations

import asyncio

import pytest

from distill.limiter import RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def starts(limiter: RateLimiter, n: int, tokens: int = 0) -> list[float]:
    return [limiter.reserve(tokens) for _ in range(n)]


def test_requests_are_spread_evenly_from_the_first_one():
    clock = FakeClock()
    limiter = RateLimiter(rpm=600, headroom=1.0, clock=clock)
    times = starts(limiter, 5)
    assert times == pytest.approx([1000.0, 1000.1, 1000.2, 1000.3, 1000.4])


def test_no_window_ever_holds_more_than_its_share():
    clock = FakeClock()
    limiter = RateLimiter(rpm=6000, clock=clock)
    times = starts(limiter, 2000)
    for i in range(len(times)):
        in_window = sum(1 for t in times[i : i + 200] if t < times[i] + 1.0)
        assert in_window <= 100


def test_headroom_keeps_the_rate_just_under_the_limit():
    clock = FakeClock()
    limiter = RateLimiter(rpm=6000, clock=clock)  # default headroom 0.985
    times = starts(limiter, 1001)
    rate = 1000 / (times[-1] - times[0])
    assert 0.98 * 100 < rate < 100


def test_token_budget_paces_by_estimated_tokens():
    clock = FakeClock()
    limiter = RateLimiter(tpm=60_000, headroom=1.0, clock=clock)  # 1000 tokens a second
    assert starts(limiter, 3, tokens=500) == pytest.approx([1000.0, 1000.5, 1001.0])


def test_settling_with_the_real_usage_gives_back_the_overestimate():
    clock = FakeClock()
    limiter = RateLimiter(tpm=60_000, headroom=1.0, clock=clock)
    limiter.reserve(1000)
    limiter.settle(estimated=1000, actual=200)
    assert limiter.reserve(100) == pytest.approx(1000.2)


def test_the_binding_budget_wins():
    clock = FakeClock()
    limiter = RateLimiter(rpm=60, tpm=600_000, headroom=1.0, clock=clock)
    assert starts(limiter, 3, tokens=10) == pytest.approx([1000.0, 1001.0, 1002.0])


def test_a_429_pauses_everyone_for_retry_after_and_trims_the_rate():
    clock = FakeClock()
    limiter = RateLimiter(rpm=600, headroom=1.0, clock=clock)
    limiter.reserve()
    limiter.on_rate_limited(retry_after=2.0)
    assert limiter.reserve() == pytest.approx(1002.0)
    assert limiter.scale < 1.0
    for _ in range(1000):
        limiter.on_success()
    assert limiter.scale == 1.0


def test_headers_saying_the_budget_is_spent_pause_until_reset():
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    limiter.on_headers(remaining=0, reset_seconds=3.0)
    assert limiter.reserve() == pytest.approx(1003.0)
    limiter.on_headers(remaining=5, reset_seconds=10.0)
    assert limiter.reserve() == pytest.approx(1003.0)


def test_unlimited_never_waits():
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    assert set(starts(limiter, 100, tokens=10_000)) == {1000.0}


def test_bad_limits_are_refused():
    with pytest.raises(ValueError, match="--rpm"):
        RateLimiter(rpm=0)


async def test_waiters_sleep_until_their_exact_slot():
    loop = asyncio.get_running_loop()
    limiter = RateLimiter(rpm=60 * 50, headroom=1.0)  # one every 20 ms
    begin = loop.time()
    woke = []

    async def one():
        await limiter.acquire()
        woke.append(loop.time() - begin)

    await asyncio.gather(*(one() for _ in range(6)))
    assert woke[0] < 0.01
    for k in range(1, 6):
        assert woke[k] == pytest.approx(0.02 * k, abs=0.015)
    assert limiter.waits == 5


def test_either_spent_budget_in_the_headers_pauses():
    from distill.client import RateHeaders

    assert RateHeaders(remaining=40, tokens_remaining=0).budget_left == 0
    assert RateHeaders(tokens_remaining=900).budget_left == 900
    assert RateHeaders().budget_left is None
