"""Request and token budgets, paced evenly and scheduled exactly, at a rate that may change at any moment.

Each budget is a generic cell rate algorithm (GCRA): a "theoretical arrival time" (TAT) moves forward by one
emission interval per unit spent. A caller that finds its units free goes at once; otherwise it joins a queue,
and one timer (``loop.call_at``, no polling) releases the head of the queue at the exact moment its units are
free. Because the moment is computed when the timer fires, a rate that changes (the controller of
:mod:`distill.rate_watch` raises and lowers it) or a pause (a 429's ``Retry-After``) applies to everyone
already waiting, and waiters are served in arrival order.

Providers enforce limits over windows as short as one second, so the budget is spread evenly over the minute
(``burst_seconds`` of slack, default none).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]
TIMER_LATENESS = 0.05  # seconds a release may be late and still count from its slot


@dataclass(slots=True)
class Budget:
    """One GCRA cell: ``rate`` units per second, ``burst`` units of tolerance."""

    rate: float
    burst: float = 1.0
    tat: float = -math.inf

    def earliest(self, now: float, scale: float = 1.0) -> float:
        """The first moment the next units may start: when the units already spent have flowed out.

        A request's own cost is paid when it starts (it pushes the TAT for the next one), so a request larger
        than the burst still goes when the cell is empty, and the flow over any window stays at the rate.
        ``scale`` runs the cell at a share of its rate.
        """
        tolerance = max(self.burst - 1.0, 0.0) / (self.rate * scale)
        return max(now, self.tat - tolerance)

    def spend(self, at: float, cost: float, scale: float = 1.0) -> None:
        self.tat = max(self.tat, at) + cost / (self.rate * scale)

    def refund(self, cost: float, scale: float = 1.0) -> None:
        self.tat -= cost / (self.rate * scale)

    def set_rate(self, rate: float, now: float) -> None:
        """Change the rate; what is already spent flows out at the new rate from ``now``."""
        if self.tat > now:
            self.tat = now + (self.tat - now) * self.rate / rate
        self.rate = rate


class RateLimiter:
    """Paces requests at ``rps`` requests and ``tps`` tokens per second (either may be None: unlimited).

    ``await limiter.acquire(tokens)`` returns when a request estimated at ``tokens`` may be sent. Afterwards call
    ``settle(estimated, actual)`` with the usage the server reported. ``set_request_rate`` and
    ``set_token_rate`` change the rates, ``pause_until`` holds everyone back until a moment.
    """

    def __init__(
        self,
        rps: float | None = None,
        tps: float | None = None,
        *,
        burst_seconds: float = 0.0,
        clock: Clock | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        for name, value in (("request rate", rps), ("token rate", tps)):
            if value is not None and value <= 0:
                raise ValueError(f"the {name} must be positive, got {value}")
        self.burst_seconds = burst_seconds
        self._requests = Budget(rps, 1.0 + burst_seconds * rps) if rps else None
        self._tokens = Budget(tps, 1.0 + burst_seconds * tps) if tps else None
        self.paused_until = -math.inf
        self._loop = loop
        self._clock = clock
        self._queue: deque[tuple[asyncio.Future[None], int]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self.waits = 0  # requests that had to wait
        self.held_back = 0  # requests that had to wait because of the request rate (not a pause or tokens)
        self.held_by: str | None = (
            None  # the limit that decided the last reservation: rpm, tpm, pause, or None
        )

    @classmethod
    def per_minute(cls, rpm: float | None = None, tpm: float | None = None, **kwargs) -> RateLimiter:
        return cls(rpm / 60.0 if rpm else None, tpm / 60.0 if tpm else None, **kwargs)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def now(self) -> float:
        return self._clock() if self._clock else self.loop.time()

    @property
    def request_rate(self) -> float | None:
        return self._requests.rate if self._requests else None

    @property
    def token_rate(self) -> float | None:
        return self._tokens.rate if self._tokens else None

    @property
    def waiting(self) -> int:
        return len(self._queue)

    # -- scheduling ---------------------------------------------------------------------------------------

    def earliest(self, tokens: int = 0, now: float | None = None) -> float:
        """The first moment a request of ``tokens`` could start, counting the pause and both budgets."""
        return self._earliest(tokens, self.now() if now is None else now)[0]

    def _earliest(self, tokens: int, now: float) -> tuple[float, str | None]:
        """That moment, and the limit that decides it when it is later than ``now`` ("rpm", "tpm", "pause")."""
        start = max(now, self.paused_until)
        held_by = "pause" if start > now else None
        if self._requests and (earliest := self._requests.earliest(now)) > start:
            start, held_by = earliest, "rpm"
        if self._tokens and tokens and (earliest := self._tokens.earliest(now)) > start:
            start, held_by = earliest, "tpm"
        return start, held_by

    def reserve(self, tokens: int = 0) -> float:
        """Book the next slot for one request of ``tokens`` and return its start time (maybe now).

        ``held_by`` says afterwards which limit decided a start later than now: "rpm", "tpm" or "pause" (a 429's
        ``Retry-After`` or a spent server budget), else None.
        """
        start, self.held_by = self._earliest(tokens, self.now())
        self._spend(start, tokens)
        return start

    def _spend(self, start: float, tokens: int) -> None:
        if self._requests:
            self._requests.spend(start, 1)
        if self._tokens and tokens:
            self._tokens.spend(start, tokens)

    def try_acquire(self, tokens: int = 0) -> bool:
        """Take the slot of one request of ``tokens`` if it is free now, without waiting; False otherwise.

        What ``acquire`` does when nothing is queued and no limit holds the request back, without a coroutine:
        the sender tries it first for every request, and awaits ``acquire`` only when it returns False.
        """
        if self._queue:
            return False
        now = self._clock() if self._clock else self.loop.time()
        if self.paused_until > now:
            return False
        requests, token_budget = self._requests, self._tokens
        if requests is not None and requests.earliest(now) > now:
            return False
        if token_budget is not None and tokens and token_budget.earliest(now) > now:
            return False
        if requests is not None:
            requests.spend(now, 1)
        if token_budget is not None and tokens:
            token_budget.spend(now, tokens)
        return True

    async def acquire(self, tokens: int = 0) -> str | None:
        """Wait for the slot of one request of ``tokens``; returns the limit that made it wait (see ``reserve``)."""
        now = self.now()
        start, held_by = self._earliest(tokens, now)
        if not self._queue and start <= now:
            self._spend(now, tokens)
            return None
        held_by = held_by or "rpm"  # behind others in the queue: they wait for the rates
        self.waits += 1
        if held_by == "rpm":
            self.held_back += 1
        waiter = self.loop.create_future()
        self._queue.append((waiter, tokens))
        self._arm()
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._refund_slot(tokens)  # released but never used: give the slot back
            raise
        return held_by

    def _refund_slot(self, tokens: int) -> None:
        if self._requests:
            self._requests.refund(1)
        if self._tokens and tokens:
            self._tokens.refund(tokens)

    def _arm(self) -> None:
        """Set the one timer for the head of the queue (again, when the rates or the pause changed)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._queue and self._queue[0][0].done():  # cancelled waiters
            self._queue.popleft()
        if not self._queue:
            return
        now = self.now()
        delay = self.earliest(self._queue[0][1], now) - now
        self._timer = self.loop.call_at(self.loop.time() + max(delay, 0.0), self._release)

    def _release(self) -> None:
        self._timer = None
        now = self.now()
        while self._queue:
            waiter, tokens = self._queue[0]
            if waiter.done():
                self._queue.popleft()
                continue
            start = self.earliest(tokens, -math.inf)
            if start > now:
                break
            self._queue.popleft()
            # spent at its slot, not at the moment the timer ran (a little late): lateness never accumulates
            self._spend(max(start, now - TIMER_LATENESS), tokens)
            waiter.set_result(None)
        self._arm()

    # -- changes ------------------------------------------------------------------------------------------

    def set_request_rate(self, rps: float | None) -> None:
        """Pace requests at ``rps`` per second from now on (None: no request limit); waiters are re-timed."""
        self._requests = self._changed(self._requests, rps)
        self._retime()

    def set_token_rate(self, tps: float | None) -> None:
        """Pace tokens at ``tps`` per second from now on (None: no token limit); waiters are re-timed."""
        self._tokens = self._changed(self._tokens, tps)
        self._retime()

    def _changed(self, budget: Budget | None, rate: float | None) -> Budget | None:
        if rate is None:
            budget = None
        elif budget is None:
            budget = Budget(rate, 1.0 + self.burst_seconds * rate)
        elif rate != budget.rate:
            budget.set_rate(rate, self.now())
            budget.burst = 1.0 + self.burst_seconds * rate
        return budget

    def _retime(self) -> None:
        if self._queue:
            self._arm()

    def pause(self, seconds: float) -> None:
        """Hold every request back for ``seconds`` from now (a ``Retry-After``, a spent budget)."""
        until = self.now() + seconds
        if seconds > 0 and until > self.paused_until:
            self.paused_until = until
            self._retime()

    def settle(self, estimated: int, actual: int | None) -> None:
        """Correct the token budget once the server has said what a request really cost."""
        if self._tokens and actual is not None and actual != estimated:
            self._tokens.refund(estimated - actual)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
