"""Sending one request: under the concurrency cap and the rate limiter, retried, and reported to the rate watch.

``Sender.fetch(request)`` returns the teacher's answer or raises the error that ended it. A transient failure
(5xx, a timeout, a broken connection, a malformed body) uses up one of ``--attempts``, with backoff. A rate-limit
answer (a 429, or a 503 that :class:`~distill.rate_watch.RateWatch` judges part of a burst of shedding) uses up
none: the request goes back through the limiter for a new slot, until ``--max-wait`` seconds have passed since
its first such refusal (its wait for a slot included), when it fails with :class:`WaitedTooLong`.
"""

from __future__ import annotations

import asyncio
import time

from .cache import Cache
from .client import TeacherClient
from .cost import Budget, expected_output_tokens
from .errors import RateLimited, ServerError, TeacherError, TransientError, WaitedTooLong
from .limiter import RateLimiter
from .rate_watch import SHED_STATUSES, RateWatch, Sent
from .requests import TeacherRequest, TeacherResponse
from .retry import RetryPolicy, Sleep
from .settings import RunSettings
from .stats import RunStats
from .tokens import count, count_messages


class NoSlotInTime(Exception):
    """A request refused for its rate found no slot in the limiter before its ``max_wait`` ran out."""


class Sender:
    def __init__(
        self,
        settings: RunSettings,
        cache: Cache,
        client: TeacherClient,
        limiter: RateLimiter,
        watch: RateWatch,
        stats: RunStats,
        *,
        policy: RetryPolicy,
        sleep: Sleep = asyncio.sleep,
        budget: Budget | None = None,
    ) -> None:
        self.settings = settings
        self.cache = cache
        self.client = client
        self.limiter = limiter
        self.watch = watch
        self.stats = stats
        self.policy = policy
        self.budget = budget
        self._sleep = sleep
        self._slots = asyncio.Semaphore(settings.concurrency)
        # a cluster shard's leased limiter (distill.cluster.lease) paces by itself and hears every outcome
        self._leased = not isinstance(limiter, RateLimiter)

    async def fetch(self, request: TeacherRequest) -> TeacherResponse:
        estimate = self._estimate_tokens(request)
        # Most requests succeed at once: try once before building the retry machinery (a tenacity loop per
        # request cost ~10% of the engine's CPU). A transient failure is replayed as the loop's first attempt,
        # so the policy waits, counts and stops exactly as if it had made that attempt itself.
        try:
            try:
                return await self._attempt(request, estimate)
            except RateLimited as refused:  # the common case has no refusal: no loop around it until one
                return await self._through_limits(request, estimate, refused)
        except WaitedTooLong:
            raise
        except TransientError as error:
            first_failure: TransientError | None = error
        async for attempt in self.policy.retrying(self._sleep, self._count_retry):
            with attempt:
                if first_failure is not None:
                    failure, first_failure = first_failure, None
                    raise failure
                response = await self._through_limits(request, estimate)
        return response

    async def _through_limits(
        self, request: TeacherRequest, estimate: int, refused: RateLimited | None = None
    ) -> TeacherResponse:
        """One attempt, sent again through the limiter after every rate-limit answer, for up to ``max_wait`` s.

        ``refused`` is the refusal of a first try already made (its ``max_wait`` starts now).
        """
        deadline: float | None = None
        while True:
            try:
                if refused is not None:
                    raise refused
                return await self._attempt(request, estimate, deadline)
            except RateLimited as refusal:
                refused, last = None, refusal
                if deadline is None:
                    deadline = asyncio.get_running_loop().time() + self.settings.max_wait
                if asyncio.get_running_loop().time() >= deadline:
                    raise self._waited_too_long(last) from None
                self.stats.retries += 1
            except NoSlotInTime:
                raise self._waited_too_long(last) from None

    def _waited_too_long(self, refused: RateLimited) -> WaitedTooLong:
        wait = self.settings.max_wait
        return WaitedTooLong(
            f"{refused} (refused for its rate for {wait:g} s: --max-wait {wait:g})", status=refused.status
        )

    async def _attempt(
        self, request: TeacherRequest, estimate: int, deadline: float | None = None
    ) -> TeacherResponse:
        slots = self._slots
        if slots.locked():
            self.stats.count_wait("concurrency")
        await slots.acquire()  # not ``async with``: its enter and exit are two coroutines a request
        try:
            if deadline is not None:
                try:
                    async with asyncio.timeout_at(deadline):
                        await self._wait_for_slot(estimate)
                except TimeoutError:
                    raise NoSlotInTime from None
            elif self._leased or not self.limiter.try_acquire(estimate):
                await self._wait_for_slot(estimate)
            if self.budget is None or self.budget.limit is None:  # no cap: answers are only charged
                return await self._send_once(request, estimate)
            if (
                self._leased
            ):  # a cluster shard's share of --budget is lent by its broker (distill.cluster.budget)
                await self.budget.make_room(request, expected_output_tokens(self.settings))
            with self.budget.reserving(request, expected_output_tokens(self.settings)):
                return await self._send_once(request, estimate)
        finally:
            slots.release()

    async def _wait_for_slot(self, estimate: int) -> None:
        if self._leased or self.limiter.waiting or self.limiter.paused_until > self.limiter.now():
            began = self.limiter.now()
            held_by = await self.limiter.acquire(estimate)
            self.stats.limiter_wait_seconds += self.limiter.now() - began
        else:
            held_by = await self.limiter.acquire(estimate)
        if held_by is not None:
            self.stats.count_wait(held_by)

    async def _send_once(self, request: TeacherRequest, estimate: int) -> TeacherResponse:
        self.stats.requests_sent += 1
        ticket = self.watch.sent()
        wall, started = time.time(), time.perf_counter()
        try:
            response, rate = await self.client.send(request)
        except TeacherError as e:
            self.cache.log_attempt(
                request.key, wall, time.perf_counter() - started, e.status, type(e).__name__
            )
            self._report_failure(e, ticket)
            raise
        self.cache.log_attempt(request.key, wall, time.perf_counter() - started, 200, None)
        self.watch.accepted(ticket, rate)
        if self._leased:
            self.limiter.on_headers(rate.budget_left, rate.spent_until)
            self.limiter.on_success()
        if response.prompt_tokens is not None and response.completion_tokens is not None:
            self.limiter.settle(estimate, response.prompt_tokens + response.completion_tokens)
            self.stats.prompt_tokens += response.prompt_tokens
            self.stats.completion_tokens += response.completion_tokens
        if self.budget is not None:
            self.budget.charge_answer(request, response)
        if response.finish_reason == "length":
            self.stats.finished_length += 1
        return response

    def _report_failure(self, error: TeacherError, ticket: Sent) -> None:
        """Tell the rate watch how a request failed; a 503 of a burst of shedding is raised as a refusal."""
        if isinstance(error, RateLimited):
            self.stats.rate_limited += 1
            self.watch.limited(ticket, error.signals)
            if self._leased:
                self.limiter.on_rate_limited(error.retry_after)
        elif isinstance(error, ServerError) and error.status in SHED_STATUSES:
            if self.watch.unavailable(ticket, error.signals):
                self.stats.shed += 1
                raise RateLimited(str(error), retry_after=None, status=error.status) from None
        else:
            self.watch.fault()

    def _estimate_tokens(self, request: TeacherRequest) -> int:
        if (self.settings.tpm if self._leased else self.limiter.token_rate) is None:
            return 0
        output = self.settings.sampling.max_tokens or self.settings.estimated_output_tokens
        if request.messages is not None:
            return count_messages([{"content": c} for _, c in request.messages]) + output
        return count(request.prompt or "") + output

    def _count_retry(self, _state) -> None:
        self.stats.retries += 1
