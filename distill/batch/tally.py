"""The count of a batch run, taken from the cache when its batches are done: conversations done and failed,
answered turns, and the reason of each failure.
"""

from __future__ import annotations

from distill import plan
from distill.conversation import Conversation
from distill.settings import RunSettings
from distill.stats import RunStats
from distill.stored import stored_conversations

from .ledger import Ledger


def count_outcome(ledger: Ledger, run_id: str, settings: RunSettings, stats: RunStats, stored: int) -> None:
    """Set ``stats``'s conversation and turn counts for ``run_id``; ``stored``: answers this run stored."""
    turns_answered = 0
    for conversation in stored_conversations(ledger.conn, run_id):
        answered, reason = conversation_status(ledger, conversation, settings)
        turns_answered += answered
        if reason is not None:
            stats.conversations_failed += 1
            stats.failures.append((conversation.id, conversation.source, reason))
        elif answered == plan.turn_count(conversation, settings):
            stats.conversations_done += 1
    stats.turns_done = turns_answered
    stats.cache_hits = max(0, turns_answered - stored)


def conversation_status(
    ledger: Ledger, conversation: Conversation, settings: RunSettings
) -> tuple[int, str | None]:
    """(answered turns, the failure reason if a turn failed for good)."""
    answers: list[str] = []
    answered = 0
    for k in range(plan.turn_count(conversation, settings)):
        request = plan.request_for(conversation, settings, k, answers)
        text = ledger.answer(request.key)
        if text is None:
            reason = ledger.failure(request.key)
            if reason is not None or settings.history == "teacher":
                return answered, reason
            continue
        answers.append(text)
        answered += 1
    return answered, None
