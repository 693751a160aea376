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
    limiter = RateLimiter.per_minute(rpm=600, clock=clock)
    times = starts(limiter, 5)
    assert times == pytest.approx([1000.0, 1000.1, 1000.2, 1000.3, 1000.4])


def test_no_window_ever_holds_more_than_its_share():
    clock = FakeClock()
    limiter = RateLimiter.per_minute(rpm=6000 * 0.985, clock=clock)  # the headroom a stated limit gets
    times = starts(limiter, 2000)
    for i in range(len(times)):
        in_window = sum(1 for t in times[i : i + 200] if t < times[i] + 1.0)
        assert in_window <= 100


def test_token_budget_paces_by_estimated_tokens():
    clock = FakeClock()
    limiter = RateLimiter.per_minute(tpm=60_000, clock=clock)  # 1000 tokens a second
    assert starts(limiter, 3, tokens=500) == pytest.approx([1000.0, 1000.5, 1001.0])


def test_settling_with_the_real_usage_gives_back_the_overestimate():
    clock = FakeClock()
    limiter = RateLimiter.per_minute(tpm=60_000, clock=clock)
    limiter.reserve(1000)
    limiter.settle(estimated=1000, actual=200)
    assert limiter.reserve(100) == pytest.approx(1000.2)


def test_the_binding_budget_wins():
    clock = FakeClock()
    limiter = RateLimiter.per_minute(rpm=60, tpm=600_000, clock=clock)
    assert starts(limiter, 3, tokens=10) == pytest.approx([1000.0, 1001.0, 1002.0])


def test_a_pause_holds_everyone_back_until_its_end():
    clock = FakeClock()
    limiter = RateLimiter.per_minute(rpm=600, clock=clock)
    limiter.reserve()
    limiter.pause(2.0)
    assert limiter.reserve() == pytest.approx(1002.0)
    limiter.pause(0.5)  # a shorter pause does not shorten the longer one
    assert limiter.paused_until == pytest.approx(1002.0)


def test_a_new_rate_applies_to_what_is_already_spent():
    clock = FakeClock()
    limiter = RateLimiter(rps=10, clock=clock)
    starts(limiter, 10)  # one second's worth booked, at 10 a second
    limiter.set_request_rate(100)  # the rest flows out ten times faster
    assert limiter.reserve() == pytest.approx(1000.1)
    limiter.set_request_rate(None)
    assert limiter.reserve() == pytest.approx(1000.0)


def test_unlimited_never_waits():
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    assert set(starts(limiter, 100, tokens=10_000)) == {1000.0}


def test_try_acquire_takes_a_free_slot_as_acquire_would_and_nothing_else():
    clock = FakeClock()
    limiter = RateLimiter(rps=10, tps=1000, clock=clock)
    assert limiter.try_acquire(500)  # free: taken now, both budgets charged
    assert not limiter.try_acquire(0)  # the next request's slot is 0.1 s away
    clock.now += 0.1
    assert not limiter.try_acquire(500)  # its slot is free, but the tokens' is 0.4 s away
    assert limiter.earliest(500) == pytest.approx(1000.5)  # the refusals spent nothing
    clock.now = 1000.5
    limiter.pause(1.0)
    assert not limiter.try_acquire(0)  # paused
    clock.now = 1001.5
    assert limiter.try_acquire(0) and limiter.waiting == 0 and limiter.waits == 0


async def test_try_acquire_never_jumps_the_queue():
    clock = FakeClock()
    limiter = RateLimiter(rps=10, clock=clock)
    limiter.reserve()
    waiter = asyncio.ensure_future(limiter.acquire())
    await asyncio.sleep(0)
    assert limiter.waiting == 1
    clock.now += 1.0  # the waiter's slot and the next are free, but the waiter is first
    assert not limiter.try_acquire()
    waiter.cancel()
    limiter.close()


def test_bad_limits_are_refused():
    with pytest.raises(ValueError, match="request rate"):
        RateLimiter(rps=0)


async def test_waiters_sleep_until_their_exact_slot():
    loop = asyncio.get_running_loop()
    limiter = RateLimiter(rps=50)  # one every 20 ms
    begin = loop.time()
    woke = []

    async def one():
        await limiter.acquire()
        woke.append(loop.time() - begin)

    await asyncio.gather(*(one() for _ in range(6)))
    assert woke[0] < 0.01
    for k in range(1, 6):
        assert woke[k] == pytest.approx(0.02 * k, abs=0.015)
    assert limiter.waits == 5 and limiter.held_back == 5


async def test_waiters_are_retimed_when_the_rate_rises():
    loop = asyncio.get_running_loop()
    limiter = RateLimiter(rps=1)  # one a second: five waiters would need four seconds
    begin = loop.time()
    tasks = [asyncio.ensure_future(limiter.acquire()) for _ in range(5)]
    await asyncio.sleep(0)
    limiter.set_request_rate(200)
    await asyncio.gather(*tasks)
    assert loop.time() - begin < 0.5


async def test_a_cancelled_waiter_gives_its_place_to_the_next():
    limiter = RateLimiter(rps=20)
    await limiter.acquire()
    first = asyncio.ensure_future(limiter.acquire())
    second = asyncio.ensure_future(limiter.acquire())
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.wait_for(second, 1.0)
    assert limiter.waiting == 0
