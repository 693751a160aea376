"""The SQLite cache: every teacher answer, keyed by its request, committed as it arrives.

One row per teacher call in ``responses``, keyed by :attr:`TeacherRequest.key`; requests that failed for good in
``failures``; each run's settings in ``runs`` and its input conversations, in input order, in ``conversations``, so
a fine-tuning file can be rendered from the cache alone. A conversation row is marked ``finished`` once every turn
of it is answered; a rerun that reads the same conversation at the same position (byte for byte) skips it without
computing a single request key, which is what makes resuming over a large finished prefix fast. A rerun rewrites
only the rows whose conversation changed, and drops the rows past the input's end once it has read it all (an
interrupted rerun leaves the previous run's rows after the point it reached). The database is in WAL mode; answers
are committed in groups some 20 milliseconds apart, so a ``kill -9`` loses at most the requests in flight and the
answers of those last milliseconds.

Look-ups and writes are batched: every ``get`` issued in the same event-loop turn is answered by one ``SELECT``
on the event loop's own thread, and writes are committed by one transaction at most ``commit_interval`` seconds
after they were queued, on a writer thread with its own connection. A look-up batch costs tens of microseconds of
SQLite work, less than a thread hand-over (aiosqlite, the first design, sent every statement to a thread: 283
against 217 microseconds of CPU per request); a group commit is one hand-over per 20 milliseconds, and SQLite
releases the GIL while it inserts, so the loop goes on meanwhile (answers not yet committed are served from
memory). WAL mode lets the two connections read and write at once, and ``synchronous = NORMAL`` means a commit
does not wait for the disk; only SQLite's checkpoints do.

The file itself (its schema and migrations, the checks before it is opened, the lock of the run writing it) is
:mod:`distill.cache_file`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

# The file's helpers stay importable from here too, as before the file had a module of its own.
from .cache_file import (  # noqa: F401
    APPLICATION_ID,
    MIGRATIONS,
    SCHEMA_VERSION,
    SQLITE_HEADER,
    RunLock,
    check_file,
    check_whole,
    connect_readonly,
    prepare,
    reported,
)
from .errors import CacheError
from .requests import TeacherResponse

LOOKUP_CHUNK = 500
BACKLOG_BATCHES = 4  # rows queued beyond this many batches make producers wait (Cache.room)
# Seconds between group commits. Larger groups write each B-tree page once for more rows: 20 ms instead of 5 cost
# some 10 us less CPU per answer at thousands of answers a second (issue 12), and still commit within tens of ms.
COMMIT_INTERVAL = 0.02


@dataclass(frozen=True, slots=True)
class Failure:
    """A request that failed for good on an earlier run.

    ``permanent`` failures (a 4xx other than 429: the request itself was refused) are not sent again unless
    ``--retry-failed``; a request that only ran out of attempts (429, 5xx, timeouts, connection errors, malformed
    bodies) is tried again by the next run, so a run that met an outage finishes by being run again.
    """

    reason: str
    status: int | None

    @property
    def permanent(self) -> bool:
        return self.status is not None and 400 <= self.status < 500 and self.status not in (408, 429)


CacheEntry = TeacherResponse | Failure


class Cache:
    """The engine's asynchronous handle on the cache. Use as ``async with Cache(path) as cache``."""

    def __init__(
        self, path: Path | str, *, commit_interval: float = COMMIT_INTERVAL, max_batch: int = 2000
    ) -> None:
        self.path = Path(path)
        self.commit_interval = commit_interval
        self.max_batch = max_batch
        self._db: sqlite3.Connection | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._writer_state = threading.local()
        self._lock = RunLock(self.path)
        self._pending_gets: dict[str, asyncio.Future[CacheEntry | None]] = {}
        self._lookup_scheduled = False
        self._unflushed: dict[str, TeacherResponse] = {}
        self._response_rows: list[tuple[Any, ...]] = []
        self._failure_rows: list[tuple[Any, ...]] = []
        self._conversation_rows: list[tuple[Any, ...]] = []
        self._finished_rows: list[tuple[str, int]] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None
        # False while the failures table is empty and no failure was queued: look-ups and commits skip it then.
        self._failures_possible = True
        self.had_answers = True  # whether the cache held any answer when it was opened (a run to resume)
        self.had_input = True  # whether it held any input conversation then
        self.commits = 0

    async def __aenter__(self) -> Cache:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        check_file(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
        except OSError as e:
            raise CacheError(
                f"cannot create the cache {self.path}: {e.strerror}; pass another --cache"
            ) from None
        try:
            with reported(self.path), sqlite3.connect(self.path) as setup:
                prepare(setup, self.path)
                # setting the journal mode writes the file's header: only when it is not WAL already
                if setup.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    setup.execute("PRAGMA journal_mode = WAL")
                self._failures_possible = bool(
                    setup.execute("SELECT EXISTS (SELECT 1 FROM failures)").fetchone()[0]
                )
                self.had_answers = bool(
                    setup.execute("SELECT EXISTS (SELECT 1 FROM responses)").fetchone()[0]
                )
                self.had_input = bool(
                    setup.execute("SELECT EXISTS (SELECT 1 FROM conversations)").fetchone()[0]
                )
            setup.close()
            self._db = self._connect()
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="distill-cache-writer")
        except BaseException:
            await self._close_db()
            self._lock.release()
            raise

    async def close(self) -> None:
        try:
            await self.flush()
        finally:
            await self._close_db()
            self._lock.release()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA busy_timeout = 10000")
        db.execute("PRAGMA synchronous = NORMAL")
        return db

    async def _close_db(self) -> None:
        if self._writer is not None:
            await asyncio.get_running_loop().run_in_executor(self._writer, self._close_writer_db)
            self._writer.shutdown()
            self._writer = None
        if self._db is not None:
            self._db.close()
            self._db = None

    def _writer_db(self) -> sqlite3.Connection:
        """The writer thread's own connection (SQLite connections stay on the thread that made them)."""
        db = getattr(self._writer_state, "db", None)
        if db is None:
            db = self._writer_state.db = self._connect()
        return db

    def _close_writer_db(self) -> None:
        db = getattr(self._writer_state, "db", None)
        if db is not None:
            db.close()
            self._writer_state.db = None

    # -- reads ---------------------------------------------------------------------------------------------

    def get(self, key: str) -> asyncio.Future[CacheEntry | None]:
        """The stored answer (or recorded failure) for ``key``, or None. Batched with every other get this turn."""
        loop = asyncio.get_running_loop()
        if key in self._unflushed:
            fut = loop.create_future()
            fut.set_result(self._unflushed[key])
            return fut
        fut = self._pending_gets.get(key)
        if fut is None:
            fut = self._pending_gets[key] = loop.create_future()
            if not self._lookup_scheduled:
                self._lookup_scheduled = True
                loop.call_soon(self._lookup_batch)
        return fut

    async def get_many(self, keys: list[str]) -> dict[str, CacheEntry]:
        """The stored answers (or recorded failures) of those ``keys`` the cache holds, in one look-up."""
        found: dict[str, CacheEntry] = {}
        stored: list[str] = []
        for key in keys:
            queued = self._unflushed.get(key)
            if queued is not None:
                found[key] = queued
            else:
                stored.append(key)
        if stored:
            with reported(self.path):
                found.update(self._lookup(stored))
        return found

    def _lookup_batch(self) -> None:
        self._lookup_scheduled = False
        pending, self._pending_gets = self._pending_gets, {}
        try:
            with reported(self.path):
                found = self._lookup(list(pending))
        except BaseException as e:
            for fut in pending.values():
                if not fut.done():
                    fut.set_exception(
                        e if isinstance(e, CacheError) else CacheError(f"reading the cache failed: {e}")
                    )
            if not isinstance(e, Exception):
                raise
            return  # the waiting futures carry the error
        for key, fut in pending.items():
            if not fut.done():
                fut.set_result(found.get(key))

    # -- writes --------------------------------------------------------------------------------------------

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

    def mark_finished(self, run_id: str, position: int) -> None:
        """Queue the mark that every turn of the conversation at ``position`` is answered."""
        self._finished_rows.append((run_id, position))
        self._schedule_flush()

    def stored_inputs(self, run_id: str, first: int, last: int) -> dict[int, tuple[bytes, bool]]:
        """The stored conversation data and finished mark of each position from ``first`` to ``last``."""
        with reported(self.path):
            rows = self._db.execute(
                "SELECT position, data, finished FROM conversations "
                "WHERE run_id = ? AND position BETWEEN ? AND ?",
                (run_id, first, last),
            )
            return {position: (data, bool(finished)) for position, data, finished in rows}

    async def drop_conversations_from(self, run_id: str, position: int) -> None:
        """Forget a run's stored conversations at ``position`` and after (the input ended before them)."""
        with reported(self.path):
            self._db.execute(
                "DELETE FROM conversations WHERE run_id = ? AND position >= ?", (run_id, position)
            )

    async def record_run(self, run_id: str, input_path: str, settings: dict[str, Any]) -> None:
        now = time.time()
        with reported(self.path):
            self._db.execute(
                "INSERT INTO runs (id, input, settings, created, updated) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET updated = excluded.updated",
                (run_id, input_path, orjson.dumps(settings, option=orjson.OPT_SORT_KEYS), now, now),
            )

    async def forget_failures(self) -> int:
        """Drop every recorded failure so the requests are tried again (``--retry-failed``)."""
        with reported(self.path):
            cursor = self._db.execute("DELETE FROM failures")
        return cursor.rowcount

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
        if not (responses or failures or conversations or finished):
            return
        with reported(self.path):
            # On the writer thread: SQLite releases the GIL while it inserts and commits, so the event loop
            # goes on answering meanwhile; look-ups of keys not yet committed are answered from ``_unflushed``.
            await asyncio.get_running_loop().run_in_executor(
                self._writer, self._write, responses, failures, conversations, finished
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

    def _lookup(self, keys: list[str]) -> dict[str, CacheEntry]:
        found: dict[str, CacheEntry] = {}
        for start in range(0, len(keys), LOOKUP_CHUNK):
            chunk = keys[start : start + LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            answers = (
                "SELECT key, text, finish_reason, prompt_tokens, completion_tokens, NULL "
                f"FROM responses WHERE key IN ({marks})"
            )
            if self._failures_possible:
                # Failures first, so that an answer for the same key (a later success) replaces them.
                rows = self._db.execute(
                    f"SELECT key, NULL, NULL, status, NULL, reason FROM failures WHERE key IN ({marks}) "
                    f"UNION ALL {answers}",
                    chunk + chunk,
                )
            else:
                rows = self._db.execute(answers, chunk)
            for key, text, finish, ptok, ctok, reason in rows:
                found[key] = (
                    Failure(reason, ptok) if reason is not None else TeacherResponse(text, finish, ptok, ctok)
                )
        return found

    def _write(self, responses: list, failures: list, conversations: list, finished: list) -> None:
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
                db.executemany(
                    "UPDATE conversations SET finished = 1 WHERE run_id = ? AND position = ?", finished
                )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
