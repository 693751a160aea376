"""Cache migration 6 (issue 15) and the rows it adds: what ``distill view`` shows that a run did not keep before.

- ``attempts``: one row per HTTP attempt that got no answer (when it was sent, its status or error kind, its
  latency; a ``--batch`` run writes one per result line instead, see :mod:`distill.run_passes`); the live attempt
  that got the answer is on its ``responses`` row (``sent_at``, ``latency``, migration 8,
  :data:`ANSWER_TIMING_MIGRATION`), and the view ``attempt_log`` reads both, so the viewer draws requests over time
  with the 429s marked, shows each answer's latency and counts a request's attempts. It is keyed by (request key,
  time) in one B-tree (``WITHOUT ROWID``): one insert per failed attempt, no second index; the timeline, drawn far
  less often than attempts are written, scans both tables;
- ``rejects``: the input records a reader could not use (``file:line``, reason, the record), as in
  ``OUTPUT.rejects.jsonl``, so the viewer needs only the cache;
- on ``conversations``: the key of the request that failed the conversation (``failed_key``) and its answers'
  tokens (``prompt_tokens``, ``answer_tokens``, ``longest_answer``), written when it fails or finishes, so the viewer's
  filters are indexed SQL instead of a walk over every conversation;
- ``runs.ended``: when the run's last pass stopped;
- ``conversation_search``: an FTS5 index of each conversation's id, source and message texts. Its rowid is
  ``runs.rowid * 2**40 + position`` (:func:`search_rowid`), so a run's matches come back in input order and a
  page is a rowid range. A run indexes its conversations in bulk, :data:`SEARCH_BATCH` at a time and when it
  closes the cache (:func:`index_for_search`): FTS5 costs about 4 microseconds a conversation in one large
  transaction but 40 to 60 in the run's small group commits (measured), which would have slowed every run.
  ``search_progress`` says how far each run is indexed; a conversation rewritten below that point (a rerun over
  a changed input) is taken out of the index by a trigger and listed in ``search_stale`` for the next pass.

The rows are queued like answers and written by the same group commit (:class:`ViewRecords` is part of
:class:`~distill.cache.Cache`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from .conversation import Reject
from .requests import TeacherResponse
from .sqlite_rows import insert_rows

RUN_SHIFT = 1 << 40  # positions below 2**40 per run in the search index's rowid


def search_rowid(run_rowid: int, position: int) -> int:
    """The ``conversation_search`` rowid of a run's conversation (see the module docstring)."""
    return run_rowid * RUN_SHIFT + position


def _text_of(row: str) -> str:
    return (
        f"{row}.id || ' ' || {row}.source || ' ' || coalesce((SELECT group_concat("
        f"json_extract(m.value, '$.content'), ' ') FROM json_each(CAST({row}.data AS TEXT), '$.messages') m), '')"
    )


def _rowid_of(row: str) -> str:
    return f"coalesce((SELECT rowid FROM runs WHERE id = {row}.run_id), 0) * {RUN_SHIFT} + {row}.position"


SEARCH_BATCH = 10_000  # conversations written between two indexing passes of a run
INDEX_NEW = (
    f"INSERT INTO conversation_search (rowid, text) SELECT {_rowid_of('c')}, {_text_of('c')} "
    "FROM conversations c {where};"
)


def index_for_search(db) -> int:
    """Index every conversation written since the last pass, in one transaction; returns how many.

    Runs on the cache's writer connection (between group commits) and when a run closes the cache. The write
    lock is taken first: the pass reads before it writes, and SQLite refuses at once, without waiting, a
    transaction that read and then asks for the lock another connection (the run's own) holds.
    """
    indexed = 0
    db.execute("BEGIN IMMEDIATE")
    try:
        for run_id, done in db.execute(
            "SELECT r.id, coalesce(p.position, -1) FROM runs r LEFT JOIN search_progress p ON p.run_id = r.id"
        ).fetchall():
            stale = "OR c.position IN (SELECT position FROM search_stale WHERE run_id = ?1)"
            cursor = db.execute(
                INDEX_NEW.format(where=f"WHERE c.run_id = ?1 AND (c.position > ?2 {stale})"), (run_id, done)
            )
            indexed += cursor.rowcount
            db.execute("DELETE FROM search_stale WHERE run_id = ?", (run_id,))
            db.execute(
                "INSERT OR REPLACE INTO search_progress SELECT ?1, max(?2, coalesce(max(position), -1)) "
                "FROM conversations WHERE run_id = ?1",
                (run_id, done),
            )
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return indexed


VIEW_MIGRATION = f"""
    CREATE TABLE attempts (
        key TEXT NOT NULL,
        at REAL NOT NULL,
        status INTEGER,
        error TEXT,
        latency REAL NOT NULL,
        PRIMARY KEY (key, at)
    ) WITHOUT ROWID;
    CREATE TABLE rejects (
        run_id TEXT NOT NULL,
        source TEXT NOT NULL,
        reason TEXT NOT NULL,
        record BLOB,
        PRIMARY KEY (run_id, source)
    );
    ALTER TABLE runs ADD COLUMN ended REAL;
    ALTER TABLE conversations ADD COLUMN failed_key TEXT;
    ALTER TABLE conversations ADD COLUMN prompt_tokens INTEGER;
    ALTER TABLE conversations ADD COLUMN answer_tokens INTEGER;
    ALTER TABLE conversations ADD COLUMN longest_answer INTEGER;
    CREATE INDEX conversations_failed ON conversations (run_id, position) WHERE failed_key IS NOT NULL;
    CREATE INDEX conversations_totals
        ON conversations (run_id, longest_answer, finished, prompt_tokens, answer_tokens);
    CREATE VIRTUAL TABLE conversation_search USING fts5 (text);
    CREATE TABLE search_progress (run_id TEXT PRIMARY KEY, position INTEGER NOT NULL);
    CREATE TABLE search_stale (
        run_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        PRIMARY KEY (run_id, position)
    ) WITHOUT ROWID;
    CREATE TRIGGER conversations_rewritten AFTER INSERT ON conversations
    WHEN new.position <= coalesce((SELECT position FROM search_progress WHERE run_id = new.run_id), -1)
    BEGIN
        DELETE FROM conversation_search WHERE rowid = {_rowid_of("new")};
        INSERT OR IGNORE INTO search_stale VALUES (new.run_id, new.position);
    END;
    CREATE TRIGGER conversations_dropped AFTER DELETE ON conversations BEGIN
        DELETE FROM conversation_search WHERE rowid = {_rowid_of("old")};
    END;
    {INDEX_NEW.format(where="")}
    INSERT INTO search_progress SELECT run_id, max(position) FROM conversations GROUP BY run_id;
"""


# migration 8 (issue 12): the answered attempt's time and latency on its answer's row, not a second row elsewhere.
# At thousands of answers a second an attempts row per answer (a B-tree insert at a random key) was a measurable
# part of the engine's CPU; failed attempts, rare, keep their rows, and so do a batch's result lines (``batch_id``,
# migration 7). Caches of schema 7 move their live answered attempts over.
# ``attempt_log`` (:data:`ALL_ATTEMPTS`) reads as the ``attempts`` table did: every attempt, answered or not.
ANSWER_TIMING_MIGRATION = """
    ALTER TABLE responses ADD COLUMN sent_at REAL;
    ALTER TABLE responses ADD COLUMN latency REAL;
    UPDATE responses SET sent_at = a.at, latency = a.latency
    FROM (SELECT key, max(at) AS at, latency FROM attempts WHERE status = 200 AND batch_id IS NULL GROUP BY key) AS a
    WHERE a.key = responses.key;
    DELETE FROM attempts WHERE status = 200 AND batch_id IS NULL AND key IN (SELECT key FROM responses);
    CREATE VIEW attempt_log (key, at, status, error, latency, batch_id) AS
        SELECT key, at, status, error, latency, batch_id FROM attempts
        UNION ALL SELECT key, sent_at, 200, NULL, latency, NULL FROM responses WHERE sent_at IS NOT NULL;
"""
ALL_ATTEMPTS = "attempt_log"  # every attempt (columns: key, at, status, error, latency, batch_id)


@dataclass(slots=True)
class ViewRows:
    """The viewer's rows queued for one group commit."""

    attempts: list[tuple[Any, ...]] = field(default_factory=list)
    failed: list[tuple[Any, ...]] = field(default_factory=list)
    rejects: list[tuple[Any, ...]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.attempts or self.failed or self.rejects)

    def write(self, db) -> None:
        """Write the rows inside the group commit's transaction on ``db``."""
        if self.attempts:
            insert_rows(
                db,
                "INSERT OR REPLACE INTO attempts (key, at, status, error, latency, batch_id) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                self.attempts,
            )
        if self.failed:
            db.executemany(
                "UPDATE conversations SET failed_key = ? WHERE run_id = ? AND position = ?", self.failed
            )
        if self.rejects:
            db.executemany("INSERT OR REPLACE INTO rejects VALUES (?, ?, ?, ?)", self.rejects)


def finished_row(run_id: str, position: int, answers: Sequence[TeacherResponse]) -> tuple[Any, ...]:
    """The parameters of the ``mark_finished`` update: prompt tokens, completion tokens, the longest answer's."""
    if len(answers) == 1:  # the usual single-turn conversation: its answer's figures, no lists
        only = answers[0]
        return only.prompt_tokens, only.completion_tokens, only.completion_tokens, run_id, position
    prompt = [a.prompt_tokens for a in answers if a.prompt_tokens is not None]
    tokens = [a.completion_tokens for a in answers if a.completion_tokens is not None]
    return (
        sum(prompt) if prompt else None,
        sum(tokens) if tokens else None,
        max(tokens) if tokens else None,
        run_id,
        position,
    )


FINISHED_UPDATE = (
    "UPDATE conversations SET finished = 1, failed_key = NULL, prompt_tokens = coalesce(?, prompt_tokens), "
    "answer_tokens = coalesce(?, answer_tokens), longest_answer = coalesce(?, longest_answer) "
    "WHERE run_id = ? AND position = ?"
)


class ViewRecords:
    """The part of :class:`~distill.cache.Cache` that records what the viewer shows (mixed in)."""

    _view_rows: ViewRows
    _answered: dict[str, tuple[float, float]]  # key -> (sent at, latency) of the attempt that got its answer

    def _schedule_flush(self) -> None:  # pragma: no cover - provided by Cache
        raise NotImplementedError

    def _complete(self, run_id: str, position: int, marks: tuple[Any, ...]) -> bool:  # pragma: no cover
        raise NotImplementedError  # provided by Cache (distill.cache_commits.GroupCommits)

    def log_attempt(self, key: str, at: float, latency: float, status: int | None, error: str | None) -> None:
        """Queue one HTTP attempt: sent at ``at`` (epoch seconds), answered or failed ``latency`` s later.

        The attempt that got the answer (200) is written on the answer's ``responses`` row, which
        :meth:`~distill.cache.Cache.put` queues next; any other gets an ``attempts`` row.
        """
        if status == 200 and error is None:
            self._answered[key] = (at, latency)
            return
        # no flush of its own: the answer or failure that follows every last attempt schedules one
        self._view_rows.attempts.append((key, at, status, error, latency, None))

    def log_batch_line(
        self, key: str, batch_id: str, at: float, turnaround: float, status: int | None, error: str | None
    ) -> None:
        """Queue what a batch's result file said of one request: its status, or why it has none (``error``).

        A Batch API dates no request: ``at`` is when the batch was uploaded, ``turnaround`` how long the batch
        took as distill saw it (see :mod:`distill.run_passes`).
        """
        self._view_rows.attempts.append((key, at, status, error, turnaround, batch_id))

    def mark_failed(self, run_id: str, position: int, key: str) -> None:
        """Queue the mark that the request ``key`` failed the conversation at ``position``."""
        if not self._complete(run_id, position, (0, key, None, None, None)):
            self._view_rows.failed.append((key, run_id, position))
        self._schedule_flush()

    def put_reject(self, run_id: str, reject: Reject) -> None:
        """Queue an input record the reader rejected (as ``OUTPUT.rejects.jsonl`` has it)."""
        try:
            record = None if reject.record is None else orjson.dumps(reject.record, default=str)
        except TypeError:  # surrogates, integers over 64 bits: keep what can be shown
            record = orjson.dumps(repr(reject.record))
        self._view_rows.rejects.append((run_id, reject.source, reject.reason, record))
        self._schedule_flush()

    def _take_view_rows(self) -> ViewRows:
        rows, self._view_rows = self._view_rows, ViewRows()
        if self._answered:  # answered attempts whose answer was not stored (an error came between): own rows
            rows.attempts.extend(
                (key, at, 200, None, latency, None) for key, (at, latency) in self._answered.items()
            )
            self._answered = {}
        return rows
