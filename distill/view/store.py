"""Read-only queries over a cache for the viewer: runs and the conversations list.

Every page is a bounded SQL query; nothing loads a run whole. The list is paged by position (keyset: ``after``),
so page 20,000 costs what page 1 costs. Filters are indexed SQL: ``failed`` uses the partial index
``conversations_failed``, ``min_tokens`` the index ``conversations_totals`` (which
also covers the run's totals), text search the FTS5 table
``conversation_search`` walked in rowid (input) order (it covers what a run has indexed so far: see
:mod:`distill.cache_view`); shard and split are computed per row by SQL functions
over the rows the query walks until a page is full.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from distill.cache import connect_readonly
from distill.cache_view import RUN_SHIFT
from distill.cost import resolve_price
from distill.shard import Shard, bucket
from distill.split import split_of

PAGE_SIZE = 50
EXCERPT = 160


def open_cache(path: Path) -> sqlite3.Connection:
    """A read-only connection (works while a run writes: WAL) with the viewer's SQL functions."""
    conn = connect_readonly(path)
    conn.execute("PRAGMA query_only = 1")
    conn.create_function("shard_of", 2, lambda cid, n: bucket(cid, n) + 1, deterministic=True)
    conn.create_function("split_of", 2, split_of, deterministic=True)
    return conn


@dataclass(slots=True)
class RunSummary:
    id: str
    input: str
    settings: dict[str, Any]
    created: float
    updated: float
    ended: float | None
    conversations: int = 0
    finished: int = 0
    failed: int = 0
    rejects: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None
    price_source: str | None = None
    passes: int = 0  # invocations of the run
    running: bool = False  # its last pass has no end: it is running now, or its process was killed

    @property
    def model(self) -> str:
        return self.settings.get("model", "")


RUN_COLUMNS = "SELECT id, input, settings, created, updated, ended FROM runs"


def runs(conn: sqlite3.Connection) -> list[RunSummary]:
    """Every run with its counts, tokens and cost at list price (None when the model's price is unknown).

    The totals are sums over the run's conversations, read from the covering index ``conversations_totals``
    (a few bytes a conversation, not the conversations themselves).
    """
    found = []
    for row in conn.execute(f"{RUN_COLUMNS} ORDER BY created").fetchall():
        run = run_counts(conn, RunSummary(row[0], row[1], orjson.loads(row[2]), *row[3:]))
        run.finished, run.prompt_tokens, run.completion_tokens = conn.execute(
            "SELECT coalesce(sum(finished), 0), coalesce(sum(prompt_tokens), 0), coalesce(sum(answer_tokens), 0) "
            "FROM conversations INDEXED BY conversations_totals WHERE run_id = ?",
            (run.id,),
        ).fetchone()
        price = resolve_price(run.model)
        if price is not None:
            run.cost = price.cost(run.prompt_tokens, run.completion_tokens)
            run.price_source = price.source
        found.append(run)
    return found


def run_summary(conn: sqlite3.Connection, run_id: str, conversations: bool = False) -> RunSummary | None:
    """One run with its counts of failures and rejects, and of conversations when asked (a walk of an index:
    about 0.1 s at a million conversations, so only the list, which shows it, asks)."""
    row = conn.execute(f"{RUN_COLUMNS} WHERE id = ?", (run_id,)).fetchone()
    if row is None:
        return None
    return run_counts(conn, RunSummary(row[0], row[1], orjson.loads(row[2]), *row[3:]), conversations)


def run_counts(conn: sqlite3.Connection, run: RunSummary, conversations: bool = True) -> RunSummary:
    if conversations:
        run.conversations = conn.execute(
            "SELECT count(*) FROM conversations INDEXED BY conversations_totals WHERE run_id = ?", (run.id,)
        ).fetchone()[0]
    run.failed = failed_count(conn, run.id)
    run.rejects = conn.execute("SELECT count(*) FROM rejects WHERE run_id = ?", (run.id,)).fetchone()[0]
    run.passes, unended = conn.execute(
        "SELECT count(*), max(started) FILTER (WHERE ended IS NULL) = max(started) FROM run_passes WHERE run_id = ?",
        (run.id,),
    ).fetchone()
    run.running = bool(unended)
    return run


def run_rowid(conn: sqlite3.Connection, run_id: str) -> int | None:
    row = conn.execute("SELECT rowid FROM runs WHERE id = ?", (run_id,)).fetchone()
    return None if row is None else row[0]


def failed_count(conn: sqlite3.Connection, run_id: str) -> int:
    return conn.execute(
        "SELECT count(*) FROM conversations c INDEXED BY conversations_failed JOIN failures f ON f.key = c.failed_key "
        "WHERE c.run_id = ? AND c.failed_key IS NOT NULL",
        (run_id,),
    ).fetchone()[0]


@dataclass(slots=True)
class ListQuery:
    """What the conversations list shows: a text search and filters, from position ``after`` on."""

    text: str = ""
    failed: bool = False
    min_tokens: int | None = None
    shard: Shard | None = None
    split: str | None = None
    val_fraction: float = 0.05
    after: int = -1
    limit: int = PAGE_SIZE


@dataclass(slots=True)
class ListRow:
    position: int
    id: str
    source: str
    excerpt: str
    turns: int
    finished: bool
    failure: str | None
    failure_status: int | None
    answer_tokens: int | None
    longest_answer: int | None


@dataclass(slots=True)
class ListPage:
    rows: list[ListRow] = field(default_factory=list)
    more: bool = False
    unindexed: int = 0  # conversations the search did not cover (not indexed yet)

    @property
    def next_after(self) -> int | None:
        return self.rows[-1].position if self.more and self.rows else None


def unindexed(conn: sqlite3.Connection, run_id: str) -> int:
    """How many of the run's conversations search does not cover yet (written since its last indexing pass)."""
    last = conn.execute("SELECT max(position) FROM conversations WHERE run_id = ?", (run_id,)).fetchone()[0]
    done = conn.execute("SELECT position FROM search_progress WHERE run_id = ?", (run_id,)).fetchone()
    stale = conn.execute("SELECT count(*) FROM search_stale WHERE run_id = ?", (run_id,)).fetchone()[0]
    if last is None:
        return 0
    return max(0, last - (done[0] if done else -1)) + stale


def fts_query(text: str) -> str:
    """The user's words as an FTS5 query: each word a quoted phrase (no FTS5 syntax from the user)."""
    words = [w.replace('"', '""') for w in text.split()]
    return " ".join(f'"{w}"' for w in words)


COLUMNS = (
    "c.position, c.id, c.source, c.data, c.finished, f.reason, f.status, c.answer_tokens, c.longest_answer"
)


def conversation_page(conn: sqlite3.Connection, run_id: str, query: ListQuery) -> ListPage:
    """One page of a run's conversations in input order, filtered by ``query``."""
    where, params = ["c.run_id = ?"], [run_id]
    if query.failed:
        where.append("c.failed_key IS NOT NULL AND f.key IS NOT NULL")
    if query.min_tokens is not None:
        where.append("c.longest_answer > ?")
        params.append(query.min_tokens)
    if query.shard is not None:
        where.append("shard_of(c.id, ?) = ?")
        params += [query.shard.count, query.shard.index]
    if query.split:
        where.append("split_of(c.id, ?) = ?")
        params += [query.val_fraction, query.split]
    joins = "LEFT JOIN failures f ON f.key = c.failed_key"
    if query.text.strip():
        base = (run_rowid(conn, run_id) or 0) * RUN_SHIFT
        sql = (
            f"SELECT {COLUMNS} FROM conversation_search s "
            f"JOIN conversations c ON c.run_id = ? AND c.position = s.rowid - ? {joins} "
            f"WHERE s.conversation_search MATCH ? AND s.rowid > ? AND s.rowid < ? AND {' AND '.join(where)} "
            "ORDER BY s.rowid LIMIT ?"
        )
        params = [run_id, base, fts_query(query.text), base + query.after, base + RUN_SHIFT, *params]
    else:
        where.append("c.position > ?")
        params.append(query.after)
        sql = f"SELECT {COLUMNS} FROM conversations c {joins} WHERE {' AND '.join(where)} ORDER BY c.position LIMIT ?"
    rows = conn.execute(sql, [*params, query.limit + 1]).fetchall()
    page = ListPage([list_row(r) for r in rows[: query.limit]], more=len(rows) > query.limit)
    if query.text.strip():
        page.unindexed = unindexed(conn, run_id)
    return page


def list_row(row: tuple) -> ListRow:
    position, conv_id, source, data, finished, reason, status, answer_tokens, longest = row
    messages = orjson.loads(data)["messages"]
    first_user = next((m["content"] for m in messages if m["role"] == "user"), "")
    excerpt = first_user if len(first_user) <= EXCERPT else first_user[:EXCERPT] + "…"
    turns = sum(m["role"] == "user" for m in messages)
    return ListRow(
        position, conv_id, source, excerpt, turns, bool(finished), reason, status, answer_tokens, longest
    )
