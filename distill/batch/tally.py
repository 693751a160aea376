"""The count of a batch run, taken from the cache when its batches are done: conversations done and failed,
answered turns, and the reason of each failure; and the marks the viewer reads, as a live run leaves them (each
finished conversation with its tokens, each failed one with the key of the request that failed it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field

from distill import plan
from distill.cache import Cache
from distill.conversation import Conversation
from distill.requests import TeacherResponse
from distill.settings import RunSettings
from distill.stats import RunStats
from distill.stored import decode_conversation

from .ledger import Ledger

YIELD_EVERY = 256


@dataclass(slots=True)
class Status:
    """Where one conversation stands: its answered turns and, when a turn failed for good, that request."""

    answers: list[TeacherResponse] = field(default_factory=list)
    failed_key: str | None = None
    reason: str | None = None


async def count_outcome(
    ledger: Ledger, cache: Cache, run_id: str, settings: RunSettings, stats: RunStats, stored: int
) -> None:
    """Set ``stats``'s conversation and turn counts for ``run_id`` and mark its conversations finished or failed
    in ``cache``; ``stored``: answers this run stored."""
    turns_answered = 0
    for n, (position, conversation, finished) in enumerate(positioned(ledger, run_id), 1):
        if finished:  # every turn answered, and marked so with its tokens (by a wave or an earlier run)
            stats.conversations_done += 1
            turns_answered += plan.turn_count(conversation, settings)
            continue
        status = mark(ledger, cache, run_id, position, conversation, settings)
        turns_answered += len(status.answers)
        if status.failed_key is not None:
            stats.conversations_failed += 1
            stats.failures.append((conversation.id, conversation.source, status.reason or ""))
        elif len(status.answers) == plan.turn_count(conversation, settings):
            stats.conversations_done += 1
        if n % YIELD_EVERY == 0:
            await cache.room()
            await asyncio.sleep(0)
    stats.turns_done = turns_answered
    stats.cache_hits = max(0, turns_answered - stored)


def mark(
    ledger: Ledger,
    cache: Cache,
    run_id: str,
    position: int,
    conversation: Conversation,
    settings: RunSettings,
) -> Status:
    """Mark the conversation at ``position`` finished (with its tokens) or failed (with the request that failed
    it) when it is either, as a live run does; returns where it stands."""
    status = conversation_status(ledger, conversation, settings)
    if status.failed_key is not None:
        cache.mark_failed(run_id, position, status.failed_key)
    elif len(status.answers) == plan.turn_count(conversation, settings):
        cache.mark_finished(run_id, position, status.answers)
    return status


def positioned(ledger: Ledger, run_id: str) -> Iterator[tuple[int, Conversation, bool]]:
    """The run's conversations in input order, each with its position and whether it is marked finished."""
    rows = ledger.conn.execute(
        "SELECT position, id, source, data, finished FROM conversations WHERE run_id = ? ORDER BY position",
        (run_id,),
    )
    for position, conv_id, source, data, finished in rows:
        yield position, decode_conversation(conv_id, source, data), bool(finished)


def conversation_status(ledger: Ledger, conversation: Conversation, settings: RunSettings) -> Status:
    """The conversation's answered turns, and the request that failed it for good if one did."""
    status = Status()
    texts: list[str] = []
    for k in range(plan.turn_count(conversation, settings)):
        request = plan.request_for(conversation, settings, k, texts)
        answer = ledger.response(request.key)
        if answer is None:
            reason = ledger.failure(request.key)
            if reason is not None:
                status.failed_key, status.reason = request.key, reason
            if reason is not None or settings.history == "teacher":
                return status
            continue
        texts.append(answer.text)
        status.answers.append(answer)
    return status
