"""The lease protocol of cluster runs (distill.cluster.lease), on a fake clock: no Ray, no waiting."""

from __future__ import annotations

import asyncio

import pytest

from distill.cluster.lease import ClusterLimit, Lease, LeaseBroker, Report
from distill.cluster.leased import LeasedLimiter
from distill.rate_policy import HEADROOM

EXACT = 1 / HEADROOM  # --rpm R is paced at R x HEADROOM: these limits are paced at round rates


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Sends:
    """When each request went: its slot when the limiter made it wait, else the moment it asked."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.times: list[float] = []
        self._slept: float | None = None

    async def sleep(self, delay: float) -> None:  # no waiting: the fake clock stands still
        self._slept = self.clock.now + delay

    async def acquire(self, limiter: LeasedLimiter, tokens: int = 0) -> None:
        self._slept = None
        await limiter.acquire(tokens)
        self.times.append(self.clock.now if self._slept is None else self._slept)


def on_one_broker(
    clock: FakeClock, limit: ClusterLimit, shards: int
) -> tuple[LeaseBroker, Sends, list[LeasedLimiter]]:
    """A broker, and ``shards`` shard limiters asking it for leases (each ask an await, as an RPC is)."""
    broker = LeaseBroker(limit, clock)
    sends = Sends(clock)

    async def ask(requests: int, tokens: int, report: Report) -> Lease:
        await asyncio.sleep(0)
        return broker.grant(requests, tokens, report)

    return broker, sends, [LeasedLimiter(limit, ask, clock=clock, sleep=sends.sleep) for _ in range(shards)]


def most_in_any_window(times: list[float], window: float) -> int:
    times = sorted(times)
    most, first = 0, 0
    for last, t in enumerate(times):
        while t - times[first] >= window - 1e-9:
            first += 1
        most = max(most, last - first + 1)
    return most


def test_leases_of_different_shards_are_consecutive_slices_of_one_timeline():
    clock = FakeClock()
    broker = LeaseBroker(ClusterLimit(rpm=6000 * EXACT, lease_seconds=0.1), clock)
    slices = []
    for shard in range(4):
        lease = broker.grant(50)  # asks for more than a lease's worth: capped at 0.1 s of 100/s
        assert lease.requests == 10 and lease.duration == pytest.approx(0.1)
        slices.append((clock.now + lease.delay, clock.now + lease.delay + lease.duration, shard))
    starts = [s for s, _, _ in slices]
    assert starts == pytest.approx([100.0, 100.1, 100.2, 100.3])  # never overlapping: one limit for the sum
    clock.now = 101.0  # time passes with nothing asked: a new lease starts now, no burst saved up
    assert broker.grant(10).delay == 0.0
    assert broker.state()["idle_seconds"] == pytest.approx(0.6)  # the rate no shard was lent meanwhile


def test_tokens_bind_a_lease_when_they_run_out_first():
    clock = FakeClock()
    broker = LeaseBroker(ClusterLimit(rpm=6000 * EXACT, tpm=60_000 * EXACT, lease_seconds=0.1), clock)
    lease = broker.grant(10, tokens=10 * 500)  # 1,000 tokens/s: a lease holds 100 tokens, 0 requests of 500
    assert lease.requests == 1 and lease.tokens == 500  # one request always fits, and takes its time
    assert lease.duration == pytest.approx(0.5)
    assert broker.grant(10, tokens=10 * 20).requests == 5  # 100 tokens at 20 each


def test_a_429_reported_by_one_shard_pauses_every_lease_and_the_controller_cuts_the_rate():
    clock = FakeClock()
    broker = LeaseBroker(ClusterLimit(rpm=600 * EXACT, lease_seconds=1.0), clock)
    assert broker.grant(10).duration == pytest.approx(1.0)
    clock.now += 1.0
    broker.report(Report(sent=10, accepted=9, latency=0.9))
    broker.report(Report(sent=0, rate_limited=1, retry_after=2.0))  # a shard meets a 429: it reports at once
    lease = broker.grant(10)
    assert lease.delay == pytest.approx(2.0)  # every shard's next lease waits out the Retry-After
    state = broker.state()
    assert state["source"] == "--rpm" and state["rpm"] < 600  # under --rpm, a refusal still cuts the rate
    assert lease.requests < 10 and lease.rate == pytest.approx(state["rpm"] / 60)  # a lease follows the rate
    broker.report(Report(remaining=0, reset_seconds=5.0, sent=1, accepted=1, latency=0.1))
    assert broker.grant(1).delay == pytest.approx(5.0)  # a spent budget the server states pauses everyone
    assert state["reported_rate_limited"] == 1 and state["reported_accepted"] == 9


def test_reports_are_gathered_and_taken_once():
    report = Report()
    report.merge(Report(accepted=3, retry_after=1.0, sent=4, latency=0.5))
    report.merge(Report(rate_limited=1, retry_after=0.5, token_refund=7, sent=1, told_rpm=600))
    taken = report.take()
    assert (taken.accepted, taken.rate_limited, taken.retry_after, taken.token_refund) == (3, 1, 1.0, 7)
    assert (taken.sent, taken.latency, taken.told_rpm) == (5, 0.5, 600)
    assert report.take() == Report()


async def test_four_shards_under_one_broker_send_no_more_than_the_limit_in_any_second():
    clock = FakeClock()
    broker, sends, shards = on_one_broker(clock, ClusterLimit(rpm=6000 * EXACT, lease_seconds=0.1), 4)

    async def shard_sends(limiter: LeasedLimiter, count: int) -> None:
        for _ in range(count):
            await sends.acquire(limiter)

    await asyncio.gather(*(shard_sends(s, 150) for s in shards))
    sent = sends.times
    assert len(sent) == 600
    assert most_in_any_window(sent, 1.0) <= 101  # the limit over any one-second window, for the sum
    assert max(sent) - min(sent) == pytest.approx(599 / 100, abs=0.15)  # and all of it: none lost
    assert sum(s.stats.leases for s in shards) == broker.leases


async def test_slots_whose_time_passed_are_lost_not_sent_late_in_a_burst():
    clock = FakeClock()
    _, sends, (limiter,) = on_one_broker(clock, ClusterLimit(rpm=600 * EXACT, lease_seconds=1.0), 1)
    await sends.acquire(limiter)  # a lease of 10 slots over [100, 101)
    clock.now = 100.55  # nothing to send for a while: slots 1 to 4 pass, slot 5 is still open
    await sends.acquire(limiter)
    await sends.acquire(limiter)
    assert sends.times == pytest.approx([100.0, 100.55, 100.6])


async def test_outcomes_go_back_with_the_next_ask_and_a_429_at_once():
    clock = FakeClock()
    limit = ClusterLimit(rpm=600, tpm=60_000, lease_seconds=1.0)
    asked: list[Report] = []
    sent_now: list[Report] = []

    async def ask(requests: int, tokens: int, report: Report) -> Lease:
        asked.append(report)
        return Lease(0.0, 1.0, requests, tokens)

    async def send_report(report: Report) -> None:
        sent_now.append(report)

    async def no_sleep(delay: float) -> None:
        pass

    limiter = LeasedLimiter(limit, ask, send_report, clock=clock, sleep=no_sleep)
    await limiter.acquire(100)
    limiter.on_success()
    limiter.settle(100, 60)
    limiter.on_rate_limited(1.5)
    await asyncio.sleep(0)
    assert sent_now and sent_now[0].rate_limited == 1 and sent_now[0].retry_after == 1.5
    assert sent_now[0].accepted == 1 and sent_now[0].token_refund == 40
    for _ in range(10):
        await limiter.acquire(100)
    assert len(asked) == 2 and asked[1].answers == 0  # every answer was reported already
    assert asked[1].held_back == 8  # the requests that waited for their slot: the rate held them back
    await limiter.close()
