"""The cache's writes: rows queued in memory and committed in groups by the cache's writer process.

Answers, failures, input conversations, finished marks and spending are queued by the event loop (an answer is
readable at once, from memory, until its commit) and written by one transaction at most ``commit_interval`` seconds
after they were queued, by :class:`~distill.cache_writer.WriterProcess` with its own connection; producers that
outrun the disk wait in :meth:`GroupCommits.room`. :class:`~distill.cache.Cache` is one, and owns the state
annotated below.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .cache_file import reported
from .cache_view import ViewRows, finished_row
from .cache_writer import CommitGroup, WriterProcess
from .key_filter import KeyFilter
from .requests import TeacherResponse

BACKLOG_BATCHES = 4  # rows queued beyond this many batches make producers wait (Cache.room)
# Seconds between group commits. Larger groups write each B-tree page once for more rows: 20 ms instead of 5 cost
# some 10 us less CPU per answer at thousands of answers a second (issue 12), and still commit within tens of ms.
COMMIT_INTERVAL = 0.02
# Seconds an input conversation's row waits in memory for its finished (or failed) mark, so that the row is written
# once, complete, instead of inserted and then rewritten by an UPDATE (issue 12: the second write of the row and its
# index entries cost some microseconds of CPU per conversation). A conversation not marked by then is written
# unmarked, as before; an explicit flush, a full batch or closing the cache write every row at once.
CONVERSATION_HOLD = 0.25

NO_TIMING = (None, None)  # an answer no attempt was logged for (a Batch API's)


class GroupCommits:
    """The write side of :class:`~distill.cache.Cache`."""

    # the state of Cache (cache.py) the writes work on
    path: Path
    commit_interval: float
    max_batch: int
    commits: int
    _db: sqlite3.Connection | None
    _writer: WriterProcess | None
    _unflushed: dict[str, TeacherResponse]
    _response_rows: list[tuple[Any, ...]]
    _failure_rows: list[tuple[Any, ...]]
    # (run id, position) -> (monotonic time queued, the row): held for their marks (CONVERSATION_HOLD)
    _conversation_rows: dict[tuple[str, int], tuple[float, tuple[Any, ...]]]
    _complete_rows: list[tuple[Any, ...]]  # conversations with their marks (CommitGroup.complete)
    _finished_rows: list[tuple[Any, ...]]
    _spend: dict[str, list[float]]
    _flush_handle: asyncio.TimerHandle | None
    _flushing: asyncio.Task[None] | None
    _failures_possible: bool
    _keys: KeyFilter | None  # the keys stored since a fresh cache was opened (Cache.may_hold)
    _answered: dict[str, tuple[float, float]]  # from distill.cache_view.ViewRecords.log_attempt
    _take_view_rows: Callable[[], ViewRows]  # from distill.cache_view.ViewRecords

    def put(self, key: str, identity: bytes, response: TeacherResponse) -> None:
        """Queue an answer for the next group commit (readable at once through ``get``), with the time and
        latency of the attempt that got it (``log_attempt``), when one was logged."""
        self._unflushed[key] = response
        if self._keys is not None:
            self._keys.add(key)
        sent_at, latency = self._answered.pop(key, NO_TIMING)
        self._response_rows.append(
            (
                key,
                identity,
                response.text,
                response.finish_reason,
                response.prompt_tokens,
                response.completion_tokens,
                time.time(),
                sent_at,
                latency,
            )
        )
        self._schedule_flush()

    def put_failure(self, key: str, reason: str, status: int | None) -> None:
        self._failures_possible = True
        if self._keys is not None:
            self._keys.add(key)
        self._failure_rows.append((key, reason, status, time.time()))
        self._schedule_flush()

    def add_conversations(self, run_id: str, rows: Iterable[tuple[int, str, str, bytes]]) -> None:
        """Queue input conversations ``(position, id, source, data)``, replacing (unfinished) what was there."""
        now = time.monotonic()
        held = self._conversation_rows
        for row in rows:
            held[run_id, row[0]] = (now, (run_id, *row))
        self._schedule_flush()

    def mark_finished(self, run_id: str, position: int, answers: Sequence[TeacherResponse] = ()) -> None:
        """Queue the mark that every turn of the conversation at ``position`` is answered (by ``answers``)."""
        marks = finished_row(run_id, position, answers)
        if not self._complete(run_id, position, (1, None, *marks[:3])):
            self._finished_rows.append(marks)
        self._schedule_flush()

    def _complete(self, run_id: str, position: int, marks: tuple[Any, ...]) -> bool:
        """Fold ``marks`` (finished, failed key, prompt, answer and longest answer's tokens) into the row of the
        conversation at ``position`` if it is still held in memory; False when it was written already."""
        held = self._conversation_rows.pop((run_id, position), None)
        if held is None:
            return False
        self._complete_rows.append((*held[1], *marks))
        return True

    def add_spend(self, run_id: str, usd: float, prompt_tokens: int, completion_tokens: int) -> None:
        """Queue the cost of one answer paid for by ``run_id`` (committed with the answers of its group)."""
        total = self._spend.setdefault(run_id, [0.0, 0, 0, 0])
        total[0] += usd
        total[1] += 1
        total[2] += prompt_tokens
        total[3] += completion_tokens
        self._schedule_flush()

    def _queued(self) -> int:
        return (
            len(self._response_rows)
            + len(self._conversation_rows)
            + len(self._complete_rows)
            + len(self._finished_rows)
        )

    def full(self) -> bool:
        """Whether :meth:`room` would wait (callers check this first: most of the time it would not)."""
        return self._queued() > BACKLOG_BATCHES * self.max_batch

    async def room(self) -> None:
        """Wait while more than ``BACKLOG_BATCHES`` commits' worth of rows are queued behind the one in progress.

        Commits run in the writer process, so nothing else stops a fast reader or teacher from queueing rows faster
        than the disk takes them; producers call this to keep memory bounded.
        """
        while self.full():
            if self._flushing is None or self._flushing.done():
                self._flushing = asyncio.ensure_future(self._flush_once(hold=False))  # all, held rows too
            await asyncio.shield(self._flushing)

    def _schedule_flush(self) -> None:
        # held conversation rows wait for their time (room() counts them)
        queued = len(self._response_rows) + len(self._complete_rows) + len(self._finished_rows)
        if queued >= self.max_batch and (self._flushing is None or self._flushing.done()):
            if self._flush_handle is not None:
                self._flush_handle.cancel()
                self._flush_handle = None
            self._flushing = asyncio.ensure_future(self._flush_once(hold=True))
        elif self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(self.commit_interval, self._start_flush)

    def _start_flush(self) -> None:
        self._flush_handle = None
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.ensure_future(self._flush_once(hold=True))
        else:
            self._flush_handle = asyncio.get_running_loop().call_later(
                self.commit_interval, self._start_flush
            )

    async def _flush_once(self, hold: bool = False) -> None:
        responses, self._response_rows = self._response_rows, []
        failures, self._failure_rows = self._failure_rows, []
        finished, self._finished_rows = self._finished_rows, []
        viewed = self._take_view_rows()
        conversations = self._take_conversations(hold, finished, viewed.failed)
        complete, self._complete_rows = self._complete_rows, []
        spend = [(run_id, *total, time.time()) for run_id, total in self._spend.items()]
        self._spend = {}
        if (
            self._conversation_rows and self._flush_handle is None
        ):  # rows held back: a later commit writes them
            self._flush_handle = asyncio.get_running_loop().call_later(
                self.commit_interval, self._start_flush
            )
        if not (responses or failures or conversations or complete or finished or spend or viewed):
            return
        group = CommitGroup(
            responses, failures, conversations, complete, finished, spend, viewed, self._failures_possible
        )
        assert self._writer is not None, "the cache is not open"
        with reported(self.path):
            # Committed by the writer process; meanwhile the event loop goes on, and look-ups of keys not yet
            # committed are answered from ``_unflushed``.
            await self._writer.commit(group)
        self.commits += 1
        for row in responses:
            self._unflushed.pop(row[0], None)

    def _take_conversations(
        self, hold: bool, finished: list[tuple[Any, ...]], failed: list[tuple[Any, ...]]
    ) -> list[tuple[Any, ...]]:
        """The held conversation rows to write now: all of them, or (``hold``) those held long enough and those
        an UPDATE of this commit marks (queued before the row: the row must be there for it)."""
        held = self._conversation_rows
        if not held:
            return []
        if not hold:
            self._conversation_rows = {}
            return [row for _, row in held.values()]
        rows = [
            held.pop(key)[1]
            for key in {(r[3], r[4]) for r in finished} | {(r[1], r[2]) for r in failed}
            if key in held
        ]
        oldest = time.monotonic() - CONVERSATION_HOLD
        aged = []  # in the order they were queued: only the oldest are looked at
        for key, (queued, row) in held.items():
            if queued > oldest:
                break
            aged.append(key)
            rows.append(row)
        for key in aged:
            del held[key]
        return rows

    async def flush(self) -> None:
        """Commit everything queued so far."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._flushing is not None:
            await self._flushing
        if self._db is not None:
            await self._flush_once(hold=False)
