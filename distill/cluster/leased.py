"""A shard's side of the lease protocol (:mod:`distill.cluster.lease`): its rate limiter and its reports.

:class:`LeasedLimiter` takes the engine's place of :class:`distill.limiter.RateLimiter` in a shard: requests take
the slots of the leases it holds, and it asks the broker for the next lease (with what happened since its last
ask, a :class:`~distill.cluster.control.Report`) while half of one is left. The outcomes come from the engine's
hooks (``on_success``, ``on_rate_limited``, ``on_headers``, ``settle``) and from the shard's own
:class:`~distill.rate_watch.RateWatch` (:meth:`LeasedLimiter.follow`), which sees every departure and answer:
the report carries the difference of its counters since the last report. The shard's watch decides nothing
here; the broker's controller does, for every shard at once.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .. import rate_policy as policy
from ..limiter import Clock
from ..rate_watch import RateWatch
from .control import Report, later
from .lease import ClusterLimit, Lease

AskLease = Callable[[int, int, Report], Awaitable[Lease]]
SendReport = Callable[[Report], Awaitable[Lease | None]]
RATE_FELL = (
    0.95  # a lease at a rate below this share of the last one's: slots held at the old rate are dropped
)


@dataclass(slots=True)
class _Held:
    """A lease in local time: slot ``i`` is at ``start + i * step``."""

    start: float
    step: float
    requests: int
    used: int = 0

    def next_slot(self, now: float) -> float | None:
        """The time of the next unused slot whose step has not passed (passed ones are lost), or None."""
        if self.step > 0 and now >= self.start + (self.used + 1) * self.step:
            self.used = max(self.used, math.floor((now - self.start) / self.step))
        if self.used >= self.requests:
            return None
        return self.start + self.used * self.step


@dataclass(slots=True)
class LeaseStats:
    """What leasing cost a shard: each ask's round trip, and the requests that had to wait for one."""

    leases: int = 0
    ask_seconds: list[float] = field(default_factory=list)
    acquired: int = 0
    stalled: int = 0  # requests that found no slot held and waited for a lease to arrive
    stalled_seconds: float = 0.0


class LeasedLimiter:
    """The engine's rate limiter on a shard: the same calls as :class:`distill.limiter.RateLimiter`.

    ``acquire`` takes the next slot of the leases held, asking ``ask`` for another lease (one ask at a time) when
    half a lease is left: only requests ask, so a shard with nothing to send holds no lease. Outcomes are
    gathered into a :class:`Report` sent with the next ask; a 429 is also sent at once through ``send_report``
    so every shard pauses and the controller decreases at once.
    """

    def __init__(
        self,
        limit: ClusterLimit,
        ask: AskLease,
        send_report: SendReport | None = None,
        *,
        clock: Clock | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.limit = limit
        self._sleep = sleep
        self._ask = ask
        self._send_report = send_report
        self._clock = clock
        self.rate = limit.rpm / 60.0 * policy.HEADROOM if limit.rpm else policy.START_RATE
        self.lease_requests = self._per_lease(self.rate)  # a lease's worth; each lease says the rate
        self._held: deque[_Held] = deque()
        self._held_until = -math.inf  # when the last lease held ends
        self._asking: asyncio.Task[None] | None = None
        self._report = Report()
        self._paused_until = -math.inf
        self._reporting: set[asyncio.Future[None]] = set()
        self._mean_tokens = 0.0
        self._watch: RateWatch | None = None
        self._seen: tuple[int, int, int, float] = (0, 0, 0, 0.0)  # the watch's counters at the last report
        self.stats = LeaseStats()
        self.waits = 0

    def _per_lease(self, rate: float) -> int:
        return max(1, math.ceil(rate * self.limit.lease_seconds))

    def follow(self, watch: RateWatch) -> None:
        """Report what ``watch`` (the shard engine's) counts: departures, sheddings, faults, latency, told limits."""
        self._watch = watch

    def now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    async def acquire(self, tokens: int = 0) -> str | None:
        """Wait for the next slot; returns what made it wait ("rpm", "tpm" or "pause"), as RateLimiter does."""
        if tokens:
            self._mean_tokens = tokens if not self._mean_tokens else 0.9 * self._mean_tokens + 0.1 * tokens
        self.stats.acquired += 1
        slot = self._take_slot()
        stalled = slot is None
        if slot is None:
            self.stats.stalled += 1
            asked = self.now()
            while (slot := self._take_slot()) is None:
                await self._lease_arrival()
            self.stats.stalled_seconds += self.now() - asked
        self._prefetch()
        now = self.now()
        delay = max(slot, self._paused_until) - now
        if stalled or slot - now > 1.0 / self.rate:  # the rate held it back, not the next slot's step
            self._report.held_back += 1
        if delay <= 0:
            return None
        self.waits += 1
        await self._sleep(delay)
        if self._paused_until > now:
            return "pause"
        return "tpm" if self.limit.tpm and not self.limit.rpm else "rpm"

    def _take_slot(self) -> float | None:
        now = self.now()
        while self._held:
            slot = self._held[0].next_slot(now)
            if slot is not None:
                self._held[0].used += 1
                return slot
            self._held.popleft()
        return None

    def _unused(self) -> int:
        return sum(h.requests - h.used for h in self._held)

    def _prefetch(self) -> None:
        """Ask for the next lease while half of this one is left (called by a request: there is demand)."""
        if self._asking is None and self._unused() <= self.lease_requests // 2 and not self._ahead():
            self._asking = asyncio.ensure_future(self._fetch())

    def _ahead(self) -> float:
        """Seconds until the leases held run out, beyond one lease: a shard asks for no more before then.

        Requests that found no slot would otherwise take the slots of lease after lease as fast as the broker
        answers, far ahead on the timeline, at the rate of the moment: a rate the controller raises or cuts, or a
        pause, would reach them only seconds later. So a shard holds about two leases of time ahead, as the
        controller's decisions must reach every shard within a fraction of a second.
        """
        return max(0.0, self._held_until - self.limit.lease_seconds - self.now())

    async def _lease_arrival(self) -> None:
        if self._asking is None:
            wait = self._ahead()
            if wait > 0:
                await self._sleep(wait)
            if self._asking is None:
                self._asking = asyncio.ensure_future(self._fetch())
        await asyncio.shield(self._asking)

    async def _fetch(self) -> None:
        try:
            wanted = max(self.lease_requests, 1)
            tokens = math.ceil(wanted * self._mean_tokens) if self.limit.tpm else 0
            asked = self.now()
            lease = await self._ask(wanted, tokens, self.take_report())
            received = self.now()
            self.stats.leases += 1
            self.stats.ask_seconds.append(received - asked)
            self._follow(lease, received)
            step = lease.duration / lease.requests if lease.requests else 0.0
            self._held.append(_Held(received + lease.delay, step, lease.requests))
            self._held_until = max(self._held_until, received + lease.delay + lease.duration)
        finally:
            self._asking = None

    def _follow(self, lease: Lease | None, received: float) -> None:
        """The cluster's rate and pause as of ``lease``: slots held at a higher rate are dropped, and none is used
        during the pause."""
        if lease is None or lease.rate <= 0:
            return
        if lease.rate < self.rate * RATE_FELL:
            for held in self._held:
                held.requests = min(held.requests, held.used)
            self._held_until = min(self._held_until, received)
        self.rate = lease.rate
        self.lease_requests = self._per_lease(lease.rate)
        if lease.pause > 0:
            self._paused_until = max(self._paused_until, received + lease.pause)

    def take_report(self) -> Report:
        """What happened since the last report (the engine's hooks, and the watch's counters), and start anew."""
        report = self._report.take()
        watch = self._watch
        if watch is None:
            return report
        counts = (watch.sent_total, watch.shed_total, watch.faults_total, watch.latency_total)
        report.sent, report.shed, report.faults, report.latency = (
            now - before for now, before in zip(counts, self._seen, strict=True)
        )
        self._seen = counts
        state = watch.state
        if state.source == "told" and state.ceiling is not None:
            report.told_rpm = state.ceiling / policy.HEADROOM * 60.0
        if not watch.user_tokens and watch.limiter.token_rate is not None:
            report.told_tpm = watch.limiter.token_rate / policy.HEADROOM * 60.0
        return report

    # -- outcomes, as RateLimiter takes them ------------------------------------------------------------------

    def settle(self, estimated: int, actual: int | None) -> None:
        if self.limit.tpm and actual is not None:
            self._report.token_refund += estimated - actual

    def on_rate_limited(self, retry_after: float | None) -> None:
        if retry_after:
            self._paused_until = max(self._paused_until, self.now() + retry_after)
        self._report.rate_limited += 1
        self._report.retry_after = later(self._report.retry_after, retry_after)
        if self._send_report is not None:  # the others pause, and the controller decides, now
            self._send_now()

    def _send_now(self) -> None:
        sending = asyncio.ensure_future(self._report_now())
        self._reporting.add(sending)
        sending.add_done_callback(self._reporting.discard)

    async def _report_now(self) -> None:
        assert self._send_report is not None
        verdict = await self._send_report(self.take_report())
        self._follow(verdict, self.now())

    def on_headers(self, remaining: float | None, reset_seconds: float | None) -> None:
        if remaining is not None and remaining <= 0 and reset_seconds:
            self._paused_until = max(self._paused_until, self.now() + reset_seconds)
            self._report.remaining, self._report.reset_seconds = remaining, reset_seconds

    def on_success(self) -> None:
        self._report.accepted += 1

    def on_spent(self, usd: float) -> None:
        """An answer's cost (a cluster-wide ``--budget`` counts it at the broker)."""
        self._report.spent_usd += usd

    async def close(self) -> None:
        """Send what is left to report, and stop asking."""
        if self._asking is not None:
            self._asking.cancel()
        if self._send_report is not None:
            report = self.take_report()
            if report.answers or report.sent or report.spent_usd:
                await self._send_report(report)
