"""Request and token budgets, paced evenly and scheduled exactly.

Each budget is a generic cell rate algorithm (GCRA): a "theoretical arrival time" (TAT) moves forward by one
emission interval per unit spent. A caller that arrives too early gets a reservation for the exact moment its
units are free, and sleeps until then with ``loop.call_at``: no polling, and waiters are served in arrival order
because each reservation pushes the TAT for the next.

Providers enforce limits over windows as short as one second, so the budget is spread evenly over the minute
(``burst_seconds`` of slack, default none) and runs a hair under the nominal limit (``headroom``). The limiter
also adapts to what the server says: a 429's ``Retry-After`` or an ``x-ratelimit-remaining: 0`` pauses everyone
until the time given, and each 429 trims the rate a little; the trim recovers with every success.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass(slots=True)
class Budget:
    """One GCRA cell: ``rate`` units per second, ``burst`` units of tolerance."""

    rate: float
    burst: float = 1.0
    tat: float = -math.inf

    def earliest(self, now: float, scale: float) -> float:
        """The first moment the next units may start: when the units already spent have flowed out.

        A request's own cost is paid after it starts (it pushes the TAT for the next one), so a request larger
        than the burst still goes when the cell is empty, and the flow over any window stays at the rate.
        """
        tolerance = max(self.burst - 1.0, 0.0) / (self.rate * scale)
        return max(now, self.tat - tolerance)

    def spend(self, at: float, cost: float, scale: float) -> None:
        self.tat = max(self.tat, at) + cost / (self.rate * scale)

    def refund(self, cost: float, scale: float) -> None:
        self.tat -= cost / (self.rate * scale)


class RateLimiter:
    """Paces requests under ``rpm`` requests and ``tpm`` tokens per minute (either may be None: unlimited).

    ``await limiter.acquire(tokens)`` returns when a request estimated at ``tokens`` may be sent. Afterwards call
    ``settle(estimated, actual)`` with the usage the server reported, ``on_rate_limited(retry_after)`` on a 429,
    ``on_headers(remaining, reset)`` with the server's rate headers, and ``on_success()``.
    """

    MIN_SCALE = 0.5
    TRIM_ON_429 = 0.95
    RECOVER_PER_SUCCESS = 0.002

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        headroom: float = 0.985,
        burst_seconds: float = 0.0,
        clock: Clock | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        for name, value in (("--rpm", rpm), ("--tpm", tpm)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        self._requests = Budget(rpm / 60.0, 1.0 + burst_seconds * rpm / 60.0) if rpm else None
        self._tokens = Budget(tpm / 60.0, 1.0 + burst_seconds * tpm / 60.0) if tpm else None
        self.headroom = headroom
        self.scale = 1.0
        self.paused_until = -math.inf
        self._loop = loop
        self._clock = clock
        self.waits = 0
        self.held_by: str | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def now(self) -> float:
        return self._clock() if self._clock else self.loop.time()

    def reserve(self, tokens: int = 0) -> float:
        """Book the next slot for one request of ``tokens`` and return its start time (maybe now).

        ``held_by`` says afterwards which limit decided a start later than now: "rpm", "tpm" or "pause" (a 429's
        ``Retry-After`` or a spent server budget), else None.
        """
        now = self.now()
        scale = self.scale * self.headroom
        start = max(now, self.paused_until)
        self.held_by = "pause" if start > now else None
        if self._requests and (earliest := self._requests.earliest(now, scale)) > start:
            start, self.held_by = earliest, "rpm"
        if self._tokens and tokens and (earliest := self._tokens.earliest(now, scale)) > start:
            start, self.held_by = earliest, "tpm"
        if self._requests:
            self._requests.spend(start, 1, scale)
        if self._tokens and tokens:
            self._tokens.spend(start, tokens, scale)
        return start

    async def acquire(self, tokens: int = 0) -> str | None:
        """Wait for the slot of one request of ``tokens``; returns the limit that made it wait (see ``reserve``)."""
        start = self.reserve(tokens)
        held_by = self.held_by
        delay = start - self.now()
        if delay <= 0:
            return None
        self.waits += 1
        waiter = self.loop.create_future()
        handle = self.loop.call_at(self.loop.time() + delay, _wake, waiter)
        try:
            await waiter
        finally:
            handle.cancel()
        return held_by

    def settle(self, estimated: int, actual: int | None) -> None:
        """Correct the token budget once the server has said what a request really cost."""
        if self._tokens and actual is not None and actual != estimated:
            self._tokens.refund(estimated - actual, self.scale * self.headroom)

    def on_rate_limited(self, retry_after: float | None) -> None:
        """A 429: pause everyone for ``retry_after`` seconds (when given) and trim the rate."""
        if retry_after is not None and retry_after > 0:
            self.paused_until = max(self.paused_until, self.now() + retry_after)
        self.scale = max(self.MIN_SCALE, self.scale * self.TRIM_ON_429)

    def on_headers(self, remaining: float | None, reset_seconds: float | None) -> None:
        """The server says its budget is spent until ``reset_seconds`` from now."""
        if remaining is not None and remaining <= 0 and reset_seconds is not None and reset_seconds > 0:
            self.paused_until = max(self.paused_until, self.now() + reset_seconds)

    def on_success(self) -> None:
        if self.scale < 1.0:
            self.scale = min(1.0, self.scale + self.RECOVER_PER_SUCCESS)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
