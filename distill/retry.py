"""When and how long to retry a teacher request: small tenacity policies.

Transient failures (5xx, timeouts, connection errors, malformed bodies) are retried with exponential backoff
and full jitter, up to ``attempts`` tries in all. A rate-limit answer (429, a burst of 503s) never reaches this
policy: the engine sends the request again through the limiter, for as long as ``--max-wait`` allows, and
``WaitedTooLong`` (what ends that) is not retried.
Permanent failures (400, 401, 403, 404, 422) are never retried. ``sleep`` is injectable so tests move time
instead of waiting for it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_base

from .errors import RateLimited, TransientError, WaitedTooLong

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``attempts`` tries in all; backoff ``initial * 2**n`` capped at ``maximum`` seconds, fully jittered."""

    attempts: int = 6
    initial: float = 0.5
    maximum: float = 30.0

    def retrying(
        self, sleep: Sleep = asyncio.sleep, on_retry: Callable[[RetryCallState], None] | None = None
    ):
        return AsyncRetrying(
            retry=retry_if_exception(worth_retrying),
            stop=stop_after_attempt(self.attempts),
            wait=WaitRetryAfterOrJitter(self.initial, self.maximum),
            sleep=sleep,
            before_sleep=on_retry,
            reraise=True,
        )


def worth_retrying(error: BaseException) -> bool:
    return isinstance(error, TransientError) and not isinstance(error, WaitedTooLong)


class WaitRetryAfterOrJitter(wait_base):
    """Full-jitter exponential backoff, but never less than the server's ``Retry-After``."""

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.maximum = maximum
        self.rng = rng or random.Random()

    def __call__(self, retry_state: RetryCallState) -> float:
        ceiling = min(self.maximum, self.initial * 2 ** (retry_state.attempt_number - 1))
        backoff = self.rng.uniform(0, ceiling)
        error = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(error, RateLimited) and error.retry_after is not None:
            return max(error.retry_after, backoff * 0.1)
        return backoff
