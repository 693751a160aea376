"""The SQLite cache: every teacher answer, keyed by its request, committed as it arrives.

One row per teacher call in ``responses``, keyed by :attr:`TeacherRequest.key`; requests that failed for good in
``failures``; each run's settings in ``runs`` and its input conversations, in input order, in ``conversations``, so
a fine-tuning file can be rendered from the cache alone. A conversation row is marked ``finished`` once every turn
of it is answered; a rerun that reads the same conversation at the same position (byte for byte) skips it without
computing a single request key, which is what makes resuming over a large finished prefix fast. A rerun rewrites
only the rows whose conversation changed, and drops the rows past the input's end once it has read it all (an
interrupted rerun leaves the previous run's rows after the point it reached). The database is in WAL mode; answers
are committed in groups some 20 milliseconds apart, so a ``kill -9`` loses at most the requests in flight and the
answers of those last milliseconds. A conversation's input row waits up to ``CONVERSATION_HOLD`` (a quarter of a
second) for its finished or failed mark, to be written once, complete; one lost to a ``kill -9`` is stored again by
the rerun, which reads the input again anyway.

Look-ups and writes are batched: every ``get`` issued in the same event-loop turn is answered by one ``SELECT``
on the event loop's own thread, and writes are committed by one transaction at most ``commit_interval`` seconds
after they were queued, by the cache's writer process (:mod:`distill.cache_writer`) with its own connection. A
look-up batch costs tens of microseconds of SQLite work, less than a thread hand-over (aiosqlite, the first
design, sent every statement to a thread: 283 against 217 microseconds of CPU per request); a group commit is one
message to the writer per 20 milliseconds, and the loop goes on meanwhile (answers not yet committed are served
from memory). WAL mode lets the two connections read and write at once, and ``synchronous = NORMAL`` means a
commit does not wait for the disk; only SQLite's checkpoints do.

The file itself (its schema and migrations, the checks before it is opened, the lock of the run writing it) is
:mod:`distill.cache_file`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from . import run_passes
from .cache_commits import BACKLOG_BATCHES, COMMIT_INTERVAL, GroupCommits  # noqa: F401

# The file's helpers stay importable from here too, as before the file had a module of its own.
from .cache_file import (  # noqa: F401
    APPLICATION_ID,
    MIGRATIONS,
    SCHEMA_VERSION,
    SQLITE_HEADER,
    RunLock,
    check_cache_writable,
    check_file,
    check_whole,
    connect_for_writing,
    connect_readonly,
    prepare,
    reported,
    writable,
)
from .cache_view import ViewRecords, ViewRows
from .cache_writer import WriterProcess
from .errors import CacheError
from .key_filter import KeyFilter
from .requests import TeacherResponse

LOOKUP_CHUNK = 500


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


class Cache(GroupCommits, ViewRecords):
    """The engine's asynchronous handle on the cache. Use as ``async with Cache(path) as cache``.

    Reads are here; the queued writes and their group commits are :class:`~distill.cache_commits.GroupCommits`.
    """

    def __init__(
        self, path: Path | str, *, commit_interval: float = COMMIT_INTERVAL, max_batch: int = 2000
    ) -> None:
        self.path = Path(path)
        self.commit_interval = commit_interval
        self.max_batch = max_batch
        self._db: sqlite3.Connection | None = None
        self._writer: WriterProcess | None = None
        self._lock = RunLock(self.path)
        self._pending_gets: dict[str, asyncio.Future[CacheEntry | None]] = {}
        self._lookup_scheduled = False
        self._unflushed: dict[str, TeacherResponse] = {}
        self._response_rows: list[tuple[Any, ...]] = []
        self._failure_rows: list[tuple[Any, ...]] = []
        self._conversation_rows: dict[tuple[str, int], tuple[float, tuple[Any, ...]]] = {}
        self._complete_rows: list[tuple[Any, ...]] = []
        self._finished_rows: list[tuple[Any, ...]] = []
        self._spend: dict[
            str, list[float]
        ] = {}  # run id -> [usd, requests, prompt, completion] not committed
        self._view_rows = ViewRows()
        self._answered: dict[str, tuple[float, float]] = {}
        self._flush_handle: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None
        # False while the failures table is empty and no failure was queued: look-ups and commits skip it then.
        self._failures_possible = True
        self.had_answers = True  # whether the cache held any answer when it was opened (a run to resume)
        self.had_input = True  # whether it held any input conversation then
        # the keys stored since opening a cache that held no answer and no failure (None: look every key up)
        self._keys: KeyFilter | None = None
        self.commits = 0

    async def __aenter__(self) -> Cache:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        check_file(self.path)
        check_cache_writable(self.path)
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
            fresh = not (self.had_answers or self._failures_possible)
            self._keys = KeyFilter() if fresh else None
            setup.close()
            self._db = connect_for_writing(self.path)
            self._writer = await WriterProcess.start(self.path)
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

    async def _close_db(self) -> None:
        try:
            if self._writer is not None:
                writer, self._writer = self._writer, None
                with reported(self.path):
                    await writer.close()
        finally:
            if self._db is not None:
                self._db.close()
                self._db = None

    # -- reads ---------------------------------------------------------------------------------------------

    def may_hold(self, key: str) -> bool:
        """False when the cache certainly holds neither an answer nor a failure for ``key``: ``get`` would find
        nothing (a cache opened empty, and ``key`` never stored since: :mod:`distill.key_filter`)."""
        return self._keys is None or self._keys.may_hold(key)

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

    def spent(self, run_id: str) -> float:
        """US dollars the cache records as spent on ``run_id`` (every invocation of its settings), committed."""
        with reported(self.path):
            row = self._db.execute("SELECT usd FROM spending WHERE run_id = ?", (run_id,)).fetchone()
        return row[0] if row else 0.0

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

    def execute(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        """One statement on the loop's own connection: for small, rare reads and writes (learned limits)."""
        with reported(self.path):
            return self._db.execute(sql, params)

    async def record_run(self, run_id: str, input_path: str, settings: dict[str, Any]) -> None:
        now = time.time()
        with reported(self.path):
            self._db.execute(
                "INSERT INTO runs (id, input, settings, created, updated) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET updated = excluded.updated",
                (run_id, input_path, orjson.dumps(settings, option=orjson.OPT_SORT_KEYS), now, now),
            )
            run_passes.record_start(self._db, run_id, now)

    async def record_run_end(self, run_id: str) -> None:
        with reported(self.path):
            now = time.time()
            self._db.execute("UPDATE runs SET ended = ? WHERE id = ?", (now, run_id))
            run_passes.record_end(self._db, run_id, now)

    async def clear_rejects(self, run_id: str) -> None:
        """Forget a run's rejected records before it reads its input again (as its rejects file is rewritten)."""
        with reported(self.path):
            self._db.execute("DELETE FROM rejects WHERE run_id = ?", (run_id,))

    async def forget_failures(self) -> int:
        """Drop every recorded failure so the requests are tried again (``--retry-failed``)."""
        with reported(self.path):
            cursor = self._db.execute("DELETE FROM failures")
        return cursor.rowcount

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
