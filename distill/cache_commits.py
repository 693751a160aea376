"""The cache's writes: rows queued in memory and committed in groups on a writer thread.

Answers, failures, input conversations, finished marks and spending are queued by the event loop (an answer is
readable at once, from memory, until its commit) and written by one transaction at most ``commit_interval`` seconds
after they were queued, on the writer thread with its own connection; producers that outrun the disk wait in
:meth:`GroupCommits.room`. :class:`~distill.cache.Cache` is one, and owns the state annotated below.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .cache_file import reported
from .cache_view import FINISHED_UPDATE, ViewRows, finished_row
from .requests import TeacherResponse

BACKLOG_BATCHES = 4  # rows queued beyond this many batches make producers wait (Cache.room)
# Seconds between group commits. Larger groups write each B-tree page once for more rows: 20 ms instead of 5 cost
# some 10 us less CPU per answer at thousands of answers a second (issue 12), and still commit within tens of ms.
COMMIT_INTERVAL = 0.02

SPEND_UPSERT = (
    "INSERT INTO spending VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(run_id) DO UPDATE SET usd = usd + excluded.usd, "
    "requests = requests + excluded.requests, prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
    "completion_tokens = completion_tokens + excluded.completion_tokens, updated = excluded.updated"
)


class GroupCommits:
    """The write side of :class:`~distill.cache.Cache`."""

    # the state of Cache (cache.py) the writes work on
    path: Path
    commit_interval: float
    max_batch: int
    commits: int
    _db: sqlite3.Connection | None
    _writer: ThreadPoolExecutor | None
    _writer_db: Callable[[], sqlite3.Connection]
    _unflushed: dict[str, TeacherResponse]
    _response_rows: list[tuple[Any, ...]]
    _failure_rows: list[tuple[Any, ...]]
    _conversation_rows: list[tuple[Any, ...]]
    _finished_rows: list[tuple[Any, ...]]
    _spend: dict[str, list[float]]
    _flush_handle: asyncio.TimerHandle | None
    _flushing: asyncio.Task[None] | None
    _failures_possible: bool
    _take_view_rows: Callable[[], ViewRows]  # from distill.cache_view.ViewRecords
    _index_if_due: Callable[[sqlite3.Connection, int], None]

    def put(self, key: str, identity: bytes, response: TeacherResponse) -> None:
        """Queue an answer for the next group commit (readable at once through ``get``)."""
        self._unflushed[key] = response
        self._response_rows.append(
            (
                key,
                identity,
                response.text,
                response.finish_reason,
                response.prompt_tokens,
                response.completion_tokens,
                time.time(),
            )
        )
        self._schedule_flush()

    def put_failure(self, key: str, reason: str, status: int | None) -> None:
        self._failures_possible = True
        self._failure_rows.append((key, reason, status, time.time()))
        self._schedule_flush()

    def add_conversations(self, run_id: str, rows: Iterable[tuple[int, str, str, bytes]]) -> None:
        """Queue input conversations ``(position, id, source, data)``, replacing (unfinished) what was there."""
        self._conversation_rows.extend((run_id, *row) for row in rows)
        self._schedule_flush()

    def mark_finished(self, run_id: str, position: int, answers: Sequence[TeacherResponse] = ()) -> None:
        """Queue the mark that every turn of the conversation at ``position`` is answered (by ``answers``)."""
        self._finished_rows.append(finished_row(run_id, position, answers))
        self._schedule_flush()

    def add_spend(self, run_id: str, usd: float, prompt_tokens: int, completion_tokens: int) -> None:
        """Queue the cost of one answer paid for by ``run_id`` (committed with the answers of its group)."""
        total = self._spend.setdefault(run_id, [0.0, 0, 0, 0])
        total[0] += usd
        total[1] += 1
        total[2] += prompt_tokens
        total[3] += completion_tokens
        self._schedule_flush()

    def _queued(self) -> int:
        return len(self._response_rows) + len(self._conversation_rows) + len(self._finished_rows)

    async def room(self) -> None:
        """Wait while more than ``BACKLOG_BATCHES`` commits' worth of rows are queued behind the one in progress.

        Commits run on the writer thread, so nothing else stops a fast reader or teacher from queueing rows faster
        than the disk takes them; producers call this to keep memory bounded.
        """
        while self._queued() > BACKLOG_BATCHES * self.max_batch:
            if self._flushing is None or self._flushing.done():
                self._schedule_flush()  # over max_batch: this starts a commit at once
            await asyncio.shield(self._flushing)

    def _schedule_flush(self) -> None:
        queued = self._queued()
        if queued >= self.max_batch and (self._flushing is None or self._flushing.done()):
            if self._flush_handle is not None:
                self._flush_handle.cancel()
                self._flush_handle = None
            self._flushing = asyncio.ensure_future(self._flush_once())
        elif self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(self.commit_interval, self._start_flush)

    def _start_flush(self) -> None:
        self._flush_handle = None
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.ensure_future(self._flush_once())
        else:
            self._flush_handle = asyncio.get_running_loop().call_later(
                self.commit_interval, self._start_flush
            )

    async def _flush_once(self) -> None:
        responses, self._response_rows = self._response_rows, []
        failures, self._failure_rows = self._failure_rows, []
        conversations, self._conversation_rows = self._conversation_rows, []
        finished, self._finished_rows = self._finished_rows, []
        spend = [(run_id, *total, time.time()) for run_id, total in self._spend.items()]
        self._spend = {}
        viewed = self._take_view_rows()
        if not (responses or failures or conversations or finished or spend or viewed):
            return
        with reported(self.path):
            # On the writer thread: SQLite releases the GIL while it inserts and commits, so the event loop
            # goes on answering meanwhile; look-ups of keys not yet committed are answered from ``_unflushed``.
            await asyncio.get_running_loop().run_in_executor(
                self._writer, self._write, responses, failures, conversations, finished, spend, viewed
            )
        self.commits += 1
        for row in responses:
            self._unflushed.pop(row[0], None)

    async def flush(self) -> None:
        """Commit everything queued so far."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._flushing is not None:
            await self._flushing
        if self._db is not None:
            await self._flush_once()

    def _write(
        self,
        responses: list,
        failures: list,
        conversations: list,
        finished: list,
        spend: list = (),
        viewed: ViewRows | None = None,
    ) -> None:
        db = self._writer_db()
        db.execute("BEGIN")
        try:
            if responses:
                db.executemany("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?)", responses)
                if self._failures_possible:
                    db.executemany("DELETE FROM failures WHERE key = ?", [(r[0],) for r in responses])
            if failures:
                db.executemany("INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?)", failures)
            if conversations:
                db.executemany(
                    "INSERT OR REPLACE INTO conversations (run_id, position, id, source, data) "
                    "VALUES (?, ?, ?, ?, ?)",
                    conversations,
                )
            if finished:
                db.executemany(FINISHED_UPDATE, finished)
            if spend:
                db.executemany(SPEND_UPSERT, spend)
            if viewed:
                viewed.write(db)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._index_if_due(db, len(conversations))
