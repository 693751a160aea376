"""A discrete-event simulation of a run against a server that limits over fixed windows: no sleeps, no sockets.

``simulate(...)`` drives the real :class:`~distill.rate_watch.RateWatch` and :class:`~distill.limiter.RateLimiter`
on a simulated clock: ``workers`` requests always want to go, each waits for the limiter (first come, first
served, released at the limiter's earliest moment), the server admits at most ``limit_at(t) * window`` requests in
each of its windows (offset by ``phase``), refuses the rest at once (429 or 503, with or without headers), and
answers the admitted ones after ``latency``.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from distill.limiter import RateLimiter
from distill.rate_watch import RateWatch
from distill.ratelimit_headers import RateSignals


@dataclass
class SimResult:
    seconds: float
    admitted: int = 0
    refused: int = 0
    faults: int = 0
    sent: int = 0
    allowed: float = 0.0  # what the limit allowed over the time
    watch: RateWatch | None = None
    admitted_at: list[float] = field(default_factory=list)
    refused_at: list[float] = field(default_factory=list)

    @property
    def share(self) -> float:
        return self.admitted / self.allowed

    @property
    def refused_share(self) -> float:
        return self.refused / max(1, self.sent)


def simulate(
    limit_at: Callable[[float], float | None],
    *,
    seconds: float = 30.0,
    workers: int = 256,
    latency: float = 0.2,
    refusal_latency: float = 0.002,
    status: int = 429,
    retry_after: bool = True,
    told: bool = False,
    phase: float = 0.37,
    fault_rate: float = 0.0,
    throttle_rate: float = 0.0,
    seed: int = 0,
    rpm: float | None = None,
    stored_rpm: float | None = None,
) -> SimResult:
    now = [0.0]
    clock = lambda: now[0]  # noqa: E731
    limiter = RateLimiter(clock=clock)
    watch = RateWatch(limiter, rpm=rpm, stored_rpm=stored_rpm, clock=clock, wall_clock=clock)
    watch.waiting = lambda: len(queue)
    rng = random.Random(seed)
    events: list = []
    seq = itertools.count()
    queue: deque[int] = deque(range(workers))
    result = SimResult(seconds, watch=watch)
    server = {"window": None, "used": 0}
    pump_at = [None]

    def push(t, kind, data=None):
        heapq.heappush(events, (t, next(seq), kind, data))

    def window_of(t):
        return int((t + phase) // 1.0)

    def admit(t) -> tuple[bool, float, float | None]:
        limit = limit_at(t)
        if limit is None:
            return True, 0.0, None
        w = window_of(t)
        if server["window"] != w:
            server["window"], server["used"] = w, 0
        budget = int((w + 1) * limit) - int(w * limit)
        reset = (w + 1) - (t + phase)
        if server["used"] < budget:
            server["used"] += 1
            return True, reset, budget
        return False, reset, budget

    def pump():
        t = now[0]
        while queue and limiter.earliest() <= t + 1e-12:
            worker = queue.popleft()
            limiter._spend(t, 0)
            sent_at = watch.sent()
            result.sent += 1
            ok, reset, budget = admit(t)
            if ok and throttle_rate and rng.random() < throttle_rate:
                ok, reset = False, 0.05
            if ok and fault_rate and rng.random() < fault_rate:
                push(t + latency, "fault", (worker, sent_at, 500 if rng.random() < 0.5 else 503))
            elif ok:
                push(t + latency, "ok", (worker, sent_at, budget))
            else:
                push(t + refusal_latency, "refused", (worker, sent_at, reset))
        if queue:
            limiter.held_back += 1
            at = limiter.earliest()
            if pump_at[0] is None or at < pump_at[0] - 1e-12 or pump_at[0] <= t:
                pump_at[0] = at
                push(at, "pump")

    push(0.0, "pump")
    while events:
        t, _, kind, data = heapq.heappop(events)
        if t > seconds:
            break
        now[0] = t
        if kind == "pump":
            if pump_at[0] is not None and t >= pump_at[0] - 1e-12:
                pump_at[0] = None
        elif kind == "ok":
            worker, sent_at, budget = data
            signals = (
                RateSignals(requests_per_second=budget, dialect="together")
                if told and budget
                else RateSignals()
            )
            watch.accepted(sent_at, signals)
            result.admitted += 1
            result.admitted_at.append(t)
            queue.append(worker)
        elif kind == "fault":
            worker, sent_at, code = data
            result.faults += 1
            if code == 503:
                watch.unavailable(sent_at, RateSignals())
            else:
                watch.fault()
            queue.append(worker)
        else:
            worker, sent_at, reset = data
            result.refused += 1
            result.refused_at.append(t)
            signals = RateSignals(retry_after=reset) if retry_after else RateSignals()
            if status == 429:
                watch.limited(sent_at, signals)
            else:
                watch.unavailable(sent_at, signals)
            queue.append(worker)
        pump()
    steps = 1000
    result.allowed = sum((limit_at(seconds * i / steps) or 0.0) * seconds / steps for i in range(steps))
    return result
