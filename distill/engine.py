"""The engine: conversations in, teacher answers into the cache, paced, retried and never paid for twice.

``Engine.run(records)`` pulls conversations from a reader's stream, stores each in the cache (so the output can be
rendered from the cache alone), and answers them with ``concurrency`` workers. Every teacher call goes through
:meth:`Engine.answer`, which is also the API for other callers (evaluation uses it):

1. a request already answered (by any run) is a cache hit; one that failed for good before is skipped unless
   ``retry_failed``;
2. a request already in flight in this run is awaited, not sent again;
3. otherwise it is sent under the concurrency cap and the rate limiter, retried by the retry policy, and its
   answer queued for the next group commit.

The limiter's rate is set by :class:`~distill.rate_watch.RateWatch` from what the server answers: it learns an
unknown limit, obeys a stated one, and starts from the rate a previous run learned (kept in the cache). A
rate-limit answer (a 429, or a 503 that is part of a burst of shedding) costs no attempt: the request goes back
through the limiter for a new slot, until ``max_wait`` seconds of such refusals have passed.

An authentication failure stops the whole run at once; any other request that fails for good fails only its
conversation, which is recorded and reported.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from . import learned_limits, plan
from .cache import Cache, Failure
from .client import TeacherClient
from .conversation import Conversation, Reject
from .cost import Budget, BudgetReached
from .errors import AuthenticationError, PermanentError, TransientError
from .limiter import RateLimiter
from .rate_watch import RateWatch, WindowRecord
from .requests import TeacherRequest, TeacherResponse
from .retry import RetryPolicy, Sleep
from .sender import Sender
from .settings import RunSettings
from .shard import Shard
from .stats import RunStats
from .stored import encode_conversation

READ_AHEAD_PER_WORKER = 4
YIELD_EVERY = 256
# Allocations between two young-generation collections during a run (CPython's default is 700). Each request
# allocates a few hundred short-lived objects, so the default collects every few requests, scanning everything
# in flight; reference counting frees almost all of it anyway. Measured: 10% less CPU per request.
GC_YOUNG_THRESHOLD = 20_000


@dataclass(frozen=True, slots=True)
class TurnFailed(Exception):
    """A conversation's turn could not be answered; carries the reason for the report."""

    reason: str
    key: str = ""  # the request that failed


class Engine:
    def __init__(
        self,
        settings: RunSettings,
        cache: Cache,
        client: TeacherClient,
        *,
        limiter: RateLimiter | None = None,
        policy: RetryPolicy | None = None,
        stats: RunStats | None = None,
        sleep: Sleep = asyncio.sleep,
        on_reject: Callable[[Reject], None] | None = None,
        budget: Budget | None = None,
        shard: Shard | None = None,
    ) -> None:
        self.settings = settings
        self.cache = cache
        self.client = client
        # A cluster shard passes a limiter that leases its slots from a broker pacing every shard together
        # (distill.cluster.lease): it hears the outcomes itself, and what this watch learns is not remembered.
        self.limiter = limiter or RateLimiter()
        self._learns = isinstance(self.limiter, RateLimiter)
        self.stats = stats or RunStats()
        self.watch = RateWatch(
            self.limiter if self._learns else RateLimiter(),
            rpm=settings.rpm,
            tpm=settings.tpm,
            stored_rpm=learned_limits.stored_rpm(cache, settings.base_url, settings.model),
            on_window=self._on_window,
        )
        self.stats.learned_rpm = self.watch.state.per_minute
        self.stats.rate_source = self.watch.state.source
        self.sender = Sender(
            settings,
            cache,
            client,
            self.limiter,
            self.watch,
            self.stats,
            policy=policy or RetryPolicy(attempts=settings.attempts),
            sleep=sleep,
            budget=budget,
        )
        self._run_id: str | None = None
        self.on_reject = on_reject
        self.budget = budget
        self.shard = shard
        # requests being answered; the future that other askers await, once there is one (``_shared``)
        self._in_flight: dict[str, asyncio.Future[TeacherResponse | Failure] | None] = {}

    # -- the run -------------------------------------------------------------------------------------------

    async def run(self, records: Iterable[Conversation | Reject], run_id: str, input_path: str) -> RunStats:
        """Answer every conversation of ``records``; returns the counters (failures listed in ``stats``)."""
        await self.cache.record_run(run_id, input_path, self.settings.request_identity())
        self._run_id = run_id
        queue: asyncio.Queue[tuple[int, Conversation, list[TeacherResponse]] | None] = asyncio.Queue(
            self.settings.concurrency * READ_AHEAD_PER_WORKER
        )
        workers = self.settings.concurrency
        try:
            with collector_tuned():
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._produce(records, run_id, queue, workers))
                    for _ in range(workers):
                        group.create_task(self._work(run_id, queue))
        except BaseExceptionGroup as group_error:
            raise first_error(group_error) from None
        finally:
            self.watch.finish()
            self.remember_rate()
            await self.cache.flush()
            await self.cache.record_run_end(run_id)
        return self.stats

    def remember_rate(self) -> None:
        """Keep the rate learned so far in the cache, for the next run against this server and model."""
        rpm = self.watch.learned_rpm() if self._learns else None
        if rpm is not None:
            learned_limits.save(
                self.cache, self.settings.base_url, self.settings.model, rpm, self.watch.state.source
            )

    def _on_window(self, window: WindowRecord) -> None:
        self.stats.learned_rpm = self.watch.state.per_minute
        self.stats.rate_source = self.watch.state.source
        # a cluster shard's windows are the broker's to keep (distill.cluster.control): this watch decides nothing
        if self._learns and (window.sent or window.limited or window.shed):
            learned_limits.record_window(
                self.cache, self._run_id, self.settings.base_url, self.settings.model, window
            )
            if window.limited or window.shed:
                self.remember_rate()

    async def _produce(self, records, run_id: str, queue: asyncio.Queue, workers: int) -> None:
        position = 0
        read: list[tuple[int, Conversation]] = []
        for n, record in enumerate(records, 1):
            if isinstance(record, Reject):
                if self.shard is None or self.shard.owns_reject(record):
                    self.stats.rejects += 1
                    if self.on_reject:
                        self.on_reject(record)
            elif self.shard is not None and not self.shard.owns_conversation(record):
                # another shard's: positions stay those of the whole input, so merged shards keep its order
                position += 1
            else:
                read.append((position, record))
                self.stats.conversations_read += 1
                position += 1
            if n % YIELD_EVERY == 0:
                await self._dispatch(run_id, read, queue)
                read = []
                await asyncio.sleep(0)
        await self._dispatch(run_id, read, queue)
        await self.cache.drop_conversations_from(run_id, position)
        for _ in range(workers):
            await queue.put(None)

    async def _dispatch(
        self, run_id: str, read: list[tuple[int, Conversation]], queue: asyncio.Queue
    ) -> None:
        """Store ``read`` conversations and hand the workers, in input order, those with a turn to answer.

        A conversation stored at the same position by an earlier run of these settings, byte for byte, and
        marked finished there is counted and skipped at once. Over a cache that held answers when the run began,
        the answers already stored for the others are looked up for the whole group at once: a conversation
        whose every turn is answered is marked finished and never reaches a worker, and a half-finished one
        starts at its first unanswered turn. A fresh cache skips both look-ups.
        """
        if not read:
            return
        previous = self.cache.stored_inputs(run_id, read[0][0], read[-1][0]) if self.cache.had_input else {}
        changed: list[tuple[int, str, str, bytes]] = []
        pending: list[tuple[int, Conversation]] = []
        for position, conversation in read:
            data = encode_conversation(conversation)
            stored = previous.get(position)
            if stored is None or stored[0] != data:
                changed.append((position, conversation.id, conversation.source, data))
            elif stored[1]:
                self._count_stored(plan.turn_count(conversation, self.settings))
                continue
            pending.append((position, conversation))
        self.cache.add_conversations(run_id, changed)
        await self.cache.room()
        if not self.cache.had_answers:
            for position, conversation in pending:
                if queue.full():  # else no coroutine: the workers mostly keep the read-ahead below its bound
                    await queue.put((position, conversation, []))
                else:
                    queue.put_nowait((position, conversation, []))
            return
        answers = await self._stored_answers([c for _, c in pending])
        for (position, conversation), (answered, turns) in zip(pending, answers, strict=True):
            if len(answered) == turns:
                self._count_stored(turns)
                self.cache.mark_finished(run_id, position, answered)
            else:
                await queue.put((position, conversation, answered))

    def _count_stored(self, turns: int) -> None:
        self.stats.cache_hits += turns
        self.stats.turns_done += turns
        self.stats.conversations_done += 1
        self.stats.conversations_cached += 1

    async def _stored_answers(
        self, conversations: list[Conversation]
    ) -> list[tuple[list[TeacherResponse], int]]:
        """For each conversation, the answers the cache holds for its first turns, and how many turns it has.

        Only answers are trusted: a key that is missing or failed is looked up again, at the last moment, by the
        worker that would send it.
        """
        rounds = plan.stored_answer_rounds(conversations, self.settings)
        try:
            keys = next(rounds)
            while True:
                keys = rounds.send(await self.cache.get_many(keys))
        except StopIteration as done:
            return [(s.answers, s.turns) for s in done.value]

    async def _work(self, run_id: str, queue: asyncio.Queue) -> None:
        cache = self.cache
        # ``get_nowait`` and ``full`` first: the read-ahead queue is seldom empty and the cache seldom full,
        # and the coroutines of ``get`` and ``room`` cost CPU on every conversation
        while (item := queue.get_nowait() if queue.qsize() else await queue.get()) is not None:
            position, conversation, answered = item
            try:
                answers = await self.answer_conversation(conversation, answered)
            except TurnFailed as failed:
                self.stats.conversations_failed += 1
                self.stats.failures.append((conversation.id, conversation.source, failed.reason))
                cache.mark_failed(run_id, position, failed.key)
            except BudgetReached:
                pass  # --budget has no room for it: the conversation stays unanswered for the next run
            else:
                self.stats.conversations_done += 1
                cache.mark_finished(run_id, position, answers)
            if cache.full():
                await cache.room()

    # -- conversations and requests -------------------------------------------------------------------------

    async def answer_conversation(
        self, conversation: Conversation, answered: Sequence[TeacherResponse] = ()
    ) -> list[TeacherResponse]:
        """The teacher's answers to every turn of ``conversation`` (raises TurnFailed).

        ``answered`` holds answers already looked up for its first turns (they count as cache hits).
        """
        turns = plan.turn_count(conversation, self.settings)
        answers: list[TeacherResponse] = list(answered)
        self.stats.cache_hits += len(answers)
        self.stats.turns_done += len(answers)
        if self.settings.history == "original":
            requests = [plan.request_for(conversation, self.settings, k) for k in range(len(answers), turns)]
            return answers + list(await asyncio.gather(*(self._answer_turn(r) for r in requests)))
        for k in range(len(answers), turns):
            request = plan.request_for(conversation, self.settings, k, [a.text for a in answers])
            result = await self.answer(request)  # what _answer_turn does, one coroutine less a turn
            if isinstance(result, Failure):
                raise TurnFailed(result.reason, request.key)
            self.stats.turns_done += 1
            answers.append(result)
        return answers

    async def _answer_turn(self, request: TeacherRequest) -> TeacherResponse:
        result = await self.answer(request)
        if isinstance(result, Failure):
            raise TurnFailed(result.reason, request.key)
        self.stats.turns_done += 1
        return result

    async def answer(self, request: TeacherRequest) -> TeacherResponse | Failure:
        """The answer to ``request``: from the cache, from a copy already in flight, or from the teacher."""
        key = request.key
        in_flight = self._in_flight
        if key in in_flight:
            return await self._shared(key)
        if self.cache.may_hold(key):
            entry = await self.cache.get(key)
        else:
            # Certainly not stored: no look-up, but still a turn of the loop before sending, as a look-up took.
            # The requests of a turn then leave together and their answers come back together, fewer per epoll
            # wake-up otherwise (measured: some 5 us of CPU per request less than sending at once).
            entry = None
            await asyncio.sleep(0)
        if isinstance(entry, TeacherResponse):
            self.stats.cache_hits += 1
            return entry
        if isinstance(entry, Failure) and entry.permanent and not self.settings.retry_failed:
            return entry
        if key in in_flight:  # another task started it while we looked
            return await self._shared(key)
        in_flight[key] = None  # a future only once another task asks for it too (``_shared``)
        try:
            try:
                result = await self.sender.fetch(request)
            except AuthenticationError:
                raise
            except (PermanentError, TransientError) as e:
                result = Failure(str(e), e.status)
                self.cache.put_failure(key, result.reason, result.status)
            else:
                self.cache.put(key, request.identity_json, result)
        except BaseException as e:
            if (shared := in_flight.pop(key)) is not None:
                shared.set_exception(e)
                shared.exception()  # mark retrieved: sharers re-raise it themselves
            raise
        if (shared := in_flight.pop(key)) is not None:
            shared.set_result(result)
        return result

    async def _shared(self, key: str) -> TeacherResponse | Failure:
        """The result of the request ``key`` that another task is answering."""
        self.stats.shared_in_flight += 1
        shared = self._in_flight[key]
        if shared is None:
            shared = self._in_flight[key] = asyncio.get_running_loop().create_future()
        return await asyncio.shield(shared)


@contextmanager
def collector_tuned() -> Iterator[None]:
    """Garbage collection tuned for a run, restored afterwards.

    What is alive when the run starts (modules, settings, the reader) is frozen out of every collection, and
    young collections run every :data:`GC_YOUNG_THRESHOLD` allocations instead of every 700.
    """
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(GC_YOUNG_THRESHOLD, thresholds[0]), *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def first_error(group: BaseExceptionGroup) -> BaseException:
    """The error to report from a task group: a DistillError if any task raised one."""
    from .errors import DistillError

    leaves = list(_leaves(group))
    return next((e for e in leaves if isinstance(e, DistillError)), leaves[0])


def _leaves(error: BaseException):
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error
