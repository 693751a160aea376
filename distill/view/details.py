"""Read-only queries for one conversation (side by side), a run's failures and its rejected records."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

import orjson

from distill import plan
from distill.cache_view import ALL_ATTEMPTS
from distill.conversation import Conversation
from distill.export import answered
from distill.requests import TeacherResponse
from distill.stored import decode_conversation, stored_settings

from .store import PAGE_SIZE


@dataclass(slots=True)
class Attempts:
    """What the cache says about one request key's attempts (the ``attempts`` rows and its answer's row)."""

    count: int = 0
    latency: float | None = None  # of the attempt that got the answer (a live one: batch lines have none)
    statuses: list[str] = field(default_factory=list)
    batch: str | None = None  # the batch of the last attempt, when it was a batch line
    turnaround: float | None = None  # that batch's, uploaded to collected


@dataclass(slots=True)
class Turn:
    number: int
    user: str
    original: str | None
    key: str | None
    answer: TeacherResponse | None
    attempts: Attempts
    failure: tuple[int | None, str] | None = None


@dataclass(slots=True)
class ConversationView:
    run_id: str
    position: int
    conversation: Conversation
    system: str | None
    turns: list[Turn]
    history: str
    previous: int | None = None  # positions of the run's conversations before and after (a shard's have gaps)
    next: int | None = None


def conversation_view(conn: sqlite3.Connection, run_id: str, position: int) -> ConversationView | None:
    """A conversation with the dataset's answers beside the teacher's, turn by turn (None when absent)."""
    row = conn.execute(
        "SELECT id, source, data FROM conversations WHERE run_id = ? AND position = ?", (run_id, position)
    ).fetchone()
    if row is None:
        return None
    conversation = decode_conversation(*row)
    settings = stored_settings(conn, run_id)
    answers, _ = answered(conn, [conversation], settings)[0]
    users, originals = conversation.user_turns, conversation.assistant_turns
    keys = turn_keys(conversation, settings, answers)
    attempts = attempts_of(conn, [k for k in keys if k])
    turns = []
    for k in range(plan.turn_count(conversation, settings)):
        key = keys[k]
        turn = Turn(
            k + 1,
            users[k],
            originals[k] if k < len(originals) else None,
            key,
            answers[k] if k < len(answers) else None,
            attempts.get(key, Attempts()) if key else Attempts(),
        )
        if key and turn.answer is None:
            failure = conn.execute("SELECT status, reason FROM failures WHERE key = ?", (key,)).fetchone()
            turn.failure = tuple(failure) if failure else None
        turns.append(turn)
    view = ConversationView(run_id, position, conversation, conversation.system, turns, settings.history)
    view.previous, view.next = conn.execute(
        "SELECT (SELECT max(position) FROM conversations WHERE run_id = ?1 AND position < ?2), "
        "(SELECT min(position) FROM conversations WHERE run_id = ?1 AND position > ?2)",
        (run_id, position),
    ).fetchone()
    return view


def turn_keys(conversation: Conversation, settings, answers: list[TeacherResponse]) -> list[str | None]:
    """Each turn's cache key; under teacher history a turn after the first unanswered one has none yet."""
    keys: list[str | None] = []
    texts = [a.text for a in answers]
    for k in range(plan.turn_count(conversation, settings)):
        if settings.history == "teacher" and k > len(answers):
            keys.append(None)
        else:
            keys.append(plan.request_for(conversation, settings, k, texts[:k]).key)
    return keys


def attempts_of(conn: sqlite3.Connection, keys: list[str]) -> dict[str, Attempts]:
    found: dict[str, Attempts] = {}
    if not keys:
        return found
    marks = ",".join("?" * len(keys))
    for key, status, error, latency, batch in conn.execute(
        f"SELECT key, status, error, latency, batch_id FROM {ALL_ATTEMPTS} WHERE key IN ({marks}) ORDER BY at",
        keys,
    ):
        entry = found.setdefault(key, Attempts())
        entry.count += 1
        entry.statuses.append(str(status) if status is not None else (error or "no answer"))
        entry.batch, entry.turnaround = (batch, latency) if batch else (None, None)
        if status == 200 and not batch:
            entry.latency = latency
    return found


@dataclass(slots=True)
class FailureRow:
    position: int
    id: str
    source: str
    key: str
    status: int | None
    reason: str
    updated: float
    attempts: int


def failures(conn: sqlite3.Connection, run_id: str, after: int = -1) -> tuple[list[FailureRow], bool]:
    """A page of the run's failed requests, each with the conversation it failed, in input order."""
    rows = conn.execute(
        "SELECT c.position, c.id, c.source, f.key, f.status, f.reason, f.updated, "
        "(SELECT count(*) FROM attempts a WHERE a.key = f.key) "
        "FROM conversations c INDEXED BY conversations_failed JOIN failures f ON f.key = c.failed_key "
        "WHERE c.run_id = ? AND c.failed_key IS NOT NULL AND c.position > ? ORDER BY c.position LIMIT ?",
        (run_id, after, PAGE_SIZE + 1),
    ).fetchall()
    return [FailureRow(*r) for r in rows[:PAGE_SIZE]], len(rows) > PAGE_SIZE


def unlinked_failures(conn: sqlite3.Connection, limit: int = PAGE_SIZE) -> list[dict[str, Any]]:
    """Failed requests no conversation of any run points to (caches from before schema 6, evaluations)."""
    return [
        {"key": k, "status": s, "reason": r, "updated": u}
        for k, s, r, u in conn.execute(
            "SELECT key, status, reason, updated FROM failures WHERE key NOT IN "
            "(SELECT failed_key FROM conversations INDEXED BY conversations_failed WHERE failed_key IS NOT NULL) "
            "ORDER BY updated LIMIT ?",
            (limit,),
        )
    ]


@dataclass(slots=True)
class RejectRow:
    rowid: int
    source: str
    reason: str
    record: str | None


def rejects(conn: sqlite3.Connection, run_id: str, after: int = 0) -> tuple[list[RejectRow], bool]:
    """A page of the run's rejected input records (``file:line``, reason, the record as JSON text)."""
    rows = conn.execute(
        "SELECT rowid, source, reason, record FROM rejects WHERE run_id = ? AND rowid > ? ORDER BY rowid LIMIT ?",
        (run_id, after, PAGE_SIZE + 1),
    ).fetchall()
    return [reject_row(r) for r in rows[:PAGE_SIZE]], len(rows) > PAGE_SIZE


def reject(conn: sqlite3.Connection, run_id: str, rowid: int) -> RejectRow | None:
    row = conn.execute(
        "SELECT rowid, source, reason, record FROM rejects WHERE run_id = ? AND rowid = ?", (run_id, rowid)
    ).fetchone()
    return None if row is None else reject_row(row)


def reject_row(row: tuple) -> RejectRow:
    rowid, source, reason, record = row
    text = None
    if record is not None:
        text = orjson.dumps(orjson.loads(record), option=orjson.OPT_INDENT_2).decode()
    return RejectRow(rowid, source, reason, text)
