"""One rate limit for many shards: a broker hands out short leases of the cluster's request and token budget.

The protocol has two messages, so that whatever decides the cluster's rate (today the broker's own pacing and
429 trim, as :mod:`distill.limiter` does in one process; later the adaptive controller of issue 11) sees every
shard's outcome in one place:

* a shard asks for a **lease**: ``grant(requests=N, tokens=T, report)`` -> :class:`Lease` ``(delay, duration,
  requests, tokens)``: "send at most N requests estimated at T tokens, evenly over ``duration`` seconds starting
  ``delay`` seconds from now";
* it **reports**, with each ask (or at once, with :meth:`LeaseBroker.report`, when it meets a 429), what happened
  since its last report: :class:`Report` ``(accepted, rate_limited, retry_after, remaining, reset_seconds,
  token_refund)``.

The broker keeps one timeline for the whole cluster, as :mod:`distill.limiter` keeps one for a process: two
GCRA cells (requests and tokens) at the limit's rate. A lease is a slice of that timeline: its start is when the
cells are free, and granting it moves them on by ``N / rate`` and ``T / token rate``. Leases of different
shards therefore never overlap in time, and a shard sends a lease's requests evenly over its slice, so what the
whole cluster sends over any window is what one process pacing at the same rate would send. Times travel as
delays relative to the moment of the answer, never as clock readings (shards on other machines do not share the
broker's clock), so a shard places its slice late by the answer's one-way trip; two shards' slices can overlap by
the difference of their trips (a millisecond or so: a request at 6,000 RPM), never by more.

For the adaptive controller: :meth:`LeaseBroker.report` is the one place every shard's outcomes arrive
(``Report.accepted`` and ``rate_limited`` counts, ``retry_after``, the ``x-ratelimit-*`` exhaustion, the token
usage against the estimate), and the rate the broker grants at (``limit``, ``scale``) is the one thing a controller
has to set: replacing the trim-and-recover rule there changes the rate of every shard at once.

A slot of a lease that passes unused is lost (sending it late would overlap another shard's slice), so a shard
asks only while it has requests waiting, and for about :attr:`ClusterLimit.lease_seconds` of the cluster's rate.

This module knows nothing of Ray: :class:`LeaseBroker` is wrapped by a Ray actor in
:mod:`distill.cluster.actors`, and :class:`LeasedLimiter` takes any coroutine function that asks for a lease.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ..limiter import Budget, Clock

# What the engine's limiter does after a 429, applied to the whole cluster's rate.
MIN_SCALE = 0.5
TRIM_ON_429 = 0.95
RECOVER_PER_SUCCESS = 0.002
TPM_ONLY_LEASE_REQUESTS = 64


@dataclass(frozen=True, slots=True)
class Lease:
    """N request slots (and T tokens) evenly over ``duration`` s, starting ``delay`` s after it was granted."""

    delay: float
    duration: float
    requests: int
    tokens: int = 0


@dataclass(slots=True)
class Report:
    """What a shard saw since its last report: the adaptive controller's input."""

    accepted: int = 0
    rate_limited: int = 0
    retry_after: float | None = None
    remaining: float | None = None
    reset_seconds: float | None = None
    token_refund: int = 0  # estimated minus reported tokens of the answers received

    def merge(self, other: Report) -> None:
        self.accepted += other.accepted
        self.rate_limited += other.rate_limited
        self.token_refund += other.token_refund
        self.retry_after = _later(self.retry_after, other.retry_after)
        if other.remaining is not None:
            self.remaining, self.reset_seconds = other.remaining, other.reset_seconds

    def take(self) -> Report:
        """This report, and start a new one."""
        taken = Report(
            self.accepted,
            self.rate_limited,
            self.retry_after,
            self.remaining,
            self.reset_seconds,
            self.token_refund,
        )
        self.accepted = self.rate_limited = self.token_refund = 0
        self.retry_after = self.remaining = self.reset_seconds = None
        return taken


def _later(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


@dataclass(frozen=True, slots=True)
class ClusterLimit:
    """The cluster's limits and how finely they are leased."""

    rpm: float | None = None
    tpm: float | None = None
    lease_seconds: float = 0.1
    headroom: float = 0.985

    @property
    def limited(self) -> bool:
        return bool(self.rpm or self.tpm)


class LeaseBroker:
    """The cluster-wide budget (one instance, in the limiter actor). ``clock`` is injectable for tests."""

    def __init__(self, limit: ClusterLimit, clock: Clock) -> None:
        self.limit = limit
        self._clock = clock
        self._requests = Budget(limit.rpm / 60.0) if limit.rpm else None
        self._tokens = Budget(limit.tpm / 60.0) if limit.tpm else None
        self.scale = 1.0
        self.paused_until = -math.inf
        self.granted = 0
        self.leases = 0
        self.idle_seconds = 0.0  # gaps in the timeline between leases: rate no shard was lent
        self.totals = Report()

    def grant(self, requests: int, tokens: int = 0, report: Report | None = None) -> Lease:
        """A lease of up to ``requests`` requests and ``tokens`` tokens (both capped at a lease's worth)."""
        if report is not None:
            self.report(report)
        now = self._clock()
        scale = self.scale * self.limit.headroom
        requests, tokens = self._capped(max(1, requests), max(0, tokens))
        start = max(now, self.paused_until)
        duration = 0.0
        if self._requests:
            start = max(start, self._requests.earliest(now, scale))
            duration = requests / (self._requests.rate * scale)
        if self._tokens and tokens:
            start = max(start, self._tokens.earliest(now, scale))
            duration = max(duration, tokens / (self._tokens.rate * scale))
        busy_until = max((c.tat for c in (self._requests, self._tokens) if c), default=-math.inf)
        if math.isfinite(busy_until) and start > busy_until:
            self.idle_seconds += start - busy_until
        if self._requests:
            self._requests.spend(start, requests, scale)
        if self._tokens and tokens:
            self._tokens.spend(start, tokens, scale)
        self.granted += requests
        self.leases += 1
        return Lease(start - now, duration, requests, tokens)

    def _capped(self, requests: int, tokens: int) -> tuple[int, int]:
        seconds = self.limit.lease_seconds
        if self.limit.rpm:
            requests = min(requests, max(1, int(self.limit.rpm / 60.0 * seconds)))
        if self.limit.tpm and tokens:
            cap = max(1, int(self.limit.tpm / 60.0 * seconds))
            if tokens > cap:  # fewer requests, each at the average estimate; one request always fits
                average = tokens / requests
                requests = max(1, int(cap / average))
                tokens = math.ceil(requests * average)
        return requests, tokens

    def report(self, report: Report) -> None:
        """Apply a shard's outcomes to the cluster's rate: pause on 429 and trim; recover with successes."""
        now = self._clock()
        self.totals.merge(report)
        scale = self.scale * self.limit.headroom
        if report.token_refund and self._tokens:
            self._tokens.refund(report.token_refund, scale)
        if report.rate_limited:
            if report.retry_after:
                self.paused_until = max(self.paused_until, now + report.retry_after)
            self.scale = max(MIN_SCALE, self.scale * TRIM_ON_429**report.rate_limited)
        if report.remaining is not None and report.remaining <= 0 and report.reset_seconds:
            self.paused_until = max(self.paused_until, now + report.reset_seconds)
        if report.accepted and self.scale < 1.0:
            self.scale = min(1.0, self.scale + RECOVER_PER_SUCCESS * report.accepted)

    def state(self) -> dict:
        """Counters for the run's summary and the benchmarks."""
        return {
            "leases": self.leases,
            "granted": self.granted,
            "idle_seconds": round(self.idle_seconds, 4),
            "scale": self.scale,
            "accepted": self.totals.accepted,
            "rate_limited": self.totals.rate_limited,
        }


AskLease = Callable[[int, int, Report], Awaitable[Lease]]
SendReport = Callable[[Report], Awaitable[None]]


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
    half a lease is left: only requests ask, so a shard with nothing to send holds no lease. Outcomes are gathered into a :class:`Report` sent with
    the next ask; a 429 is also sent at once through ``send_report`` so every shard pauses.
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
        # a lease's worth of requests; under --tpm alone the broker cuts the count to the tokens it grants
        per_lease = limit.rpm / 60.0 * limit.lease_seconds if limit.rpm else TPM_ONLY_LEASE_REQUESTS
        self.lease_requests = max(1, math.ceil(per_lease))
        self._held: deque[_Held] = deque()
        self._asking: asyncio.Task[None] | None = None
        self._report = Report()
        self._paused_until = -math.inf
        self._reporting: set[asyncio.Future[None]] = set()
        self._mean_tokens = 0.0
        self.stats = LeaseStats()
        self.waits = 0

    def now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    async def acquire(self, tokens: int = 0) -> str | None:
        """Wait for the next slot; returns what made it wait ("rpm", "tpm" or "pause"), as RateLimiter does."""
        if tokens:
            self._mean_tokens = tokens if not self._mean_tokens else 0.9 * self._mean_tokens + 0.1 * tokens
        self.stats.acquired += 1
        slot = self._take_slot()
        if slot is None:
            self.stats.stalled += 1
            asked = self.now()
            while (slot := self._take_slot()) is None:
                await self._lease_arrival()
            self.stats.stalled_seconds += self.now() - asked
        self._prefetch()
        now = self.now()
        delay = max(slot, self._paused_until) - now
        if delay <= 0:
            return None
        self.waits += 1
        await self._sleep(delay)
        return "pause" if self._paused_until > now else "rpm" if self.limit.rpm else "tpm"

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
        if self._asking is None and self._unused() <= self.lease_requests // 2:
            self._asking = asyncio.ensure_future(self._fetch())

    async def _lease_arrival(self) -> None:
        if self._asking is None:
            self._asking = asyncio.ensure_future(self._fetch())
        await asyncio.shield(self._asking)

    async def _fetch(self) -> None:
        try:
            wanted = max(self.lease_requests, 1)
            tokens = math.ceil(wanted * self._mean_tokens) if self.limit.tpm else 0
            asked = self.now()
            lease = await self._ask(wanted, tokens, self._report.take())
            received = self.now()
            self.stats.leases += 1
            self.stats.ask_seconds.append(received - asked)
            step = lease.duration / lease.requests if lease.requests else 0.0
            self._held.append(_Held(received + lease.delay, step, lease.requests))
        finally:
            self._asking = None

    # -- outcomes, as RateLimiter takes them ------------------------------------------------------------------

    def settle(self, estimated: int, actual: int | None) -> None:
        if self.limit.tpm and actual is not None:
            self._report.token_refund += estimated - actual

    def on_rate_limited(self, retry_after: float | None) -> None:
        if retry_after:
            self._paused_until = max(self._paused_until, self.now() + retry_after)
        self._report.rate_limited += 1
        self._report.retry_after = _later(self._report.retry_after, retry_after)
        if self._send_report is not None:  # the others pause now, not at their next ask
            sending = asyncio.ensure_future(self._send_report(self._report.take()))
            self._reporting.add(sending)
            sending.add_done_callback(self._reporting.discard)

    def on_headers(self, remaining: float | None, reset_seconds: float | None) -> None:
        if remaining is not None and remaining <= 0 and reset_seconds:
            self._paused_until = max(self._paused_until, self.now() + reset_seconds)
            self._report.remaining, self._report.reset_seconds = remaining, reset_seconds

    def on_success(self) -> None:
        self._report.accepted += 1

    async def close(self) -> None:
        """Send what is left to report, and stop asking."""
        if self._asking is not None:
            self._asking.cancel()
        if self._send_report is not None and (self._report.accepted or self._report.rate_limited):
            await self._send_report(self._report.take())
