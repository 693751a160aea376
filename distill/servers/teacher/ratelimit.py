"""The server-side rate limit: requests and tokens per minute, enforced over fixed one-second windows.

Real providers state a per-minute limit but enforce it in short windows, so a client that sends a minute's
budget in one burst is refused most of it. Here window ``i`` (counted from the limiter's start) admits
``floor((i+1)*b) - floor(i*b)`` requests, with ``b = limit * window / 60``: the fractional part of a budget
carries over, so over any whole minute exactly the per-minute limit is admitted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class Admission:
    """The limiter's verdict on one request, with the numbers its ``x-ratelimit-*`` headers report."""

    admitted: bool
    limited_by: str | None  # "requests" or "tokens" when refused
    reset_s: float  # seconds until the current window ends
    headers: dict[str, str]


def _window_budget(per_minute: float, window_s: float, index: int) -> int:
    per_window = per_minute * window_s / 60.0
    return math.floor((index + 1) * per_window) - math.floor(index * per_window)


class WindowLimiter:
    """Fixed-window limiter for requests per minute and/or tokens per minute (``None``: no limit)."""

    def __init__(
        self,
        rpm: float | None,
        tpm: float | None,
        *,
        window_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.window_s = window_s
        self._clock = clock
        self._start = clock()
        self._index = 0
        self._request_limit = self._limit(rpm, 0)
        self._token_limit = self._limit(tpm, 0)
        self._requests = 0
        self._tokens = 0

    def _limit(self, per_minute: float | None, index: int) -> int:
        return 0 if per_minute is None else _window_budget(per_minute, self.window_s, index)

    def _roll(self, now: float) -> None:
        index = int((now - self._start) / self.window_s)
        if index != self._index:
            self._index = index
            self._request_limit = self._limit(self.rpm, index)
            self._token_limit = self._limit(self.tpm, index)
            self._requests = 0
            self._tokens = 0

    def acquire(self, tokens: int) -> Admission:
        """Admit a request costing ``tokens`` if the current window has room for it, and charge it."""
        now = self._clock()
        self._roll(now)
        reset_s = (self._index + 1) * self.window_s - (now - self._start)
        limited_by = None
        if self.rpm is not None and self._requests + 1 > self._request_limit:
            limited_by = "requests"
        # A request bigger than a whole window's token budget is let into an empty window, or it could never pass.
        elif self.tpm is not None and self._tokens + tokens > self._token_limit and self._tokens > 0:
            limited_by = "tokens"
        if limited_by is None:
            self._requests += 1
            self._tokens += tokens
        return Admission(limited_by is None, limited_by, reset_s, self._headers(reset_s))

    def _headers(self, reset_s: float) -> dict[str, str]:
        reset = f"{reset_s:.3f}"
        headers: dict[str, str] = {}
        if self.rpm is not None:
            headers["x-ratelimit-limit"] = str(self._request_limit)
            headers["x-ratelimit-remaining"] = str(max(0, self._request_limit - self._requests))
            headers["x-ratelimit-reset"] = reset
        if self.tpm is not None:
            headers["x-tokenlimit-limit"] = str(self._token_limit)
            headers["x-tokenlimit-remaining"] = str(max(0, self._token_limit - self._tokens))
            if self.rpm is None:
                headers["x-ratelimit-reset"] = reset
        return headers
