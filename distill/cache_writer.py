"""The cache's writer: a child process that commits the group commits of :mod:`distill.cache_commits`.

The event loop queues rows; every group commit's rows go, encoded (:func:`encode`), down a pipe to this process,
which writes them in one transaction on its own SQLite connection and answers when they are committed (or with
the SQLite error that stopped them). It was a thread: SQLite releases the GIL while it works, but the thread still
took the GIL to bind every value and between statements, and each hand-over stopped the event loop. Measured at
thousands of answers a second (issue 12): the loop's thread spent 117 to 120 us of wall time per request with the
writer thread, 110 to 112 with this process (104 if the writer ran no SQL: its CPU competes for the cores; the
bare aiohttp loop: 74).

The process is started with the cache and ends with it. It runs in the background (:func:`run_in_the_background`)
and in a session of its own, so a Ctrl-C at the terminal reaches the run, which commits what it holds and then
closes the writer. When the run's process dies (``kill -9``), the pipe ends: the writer commits every group it
received whole and exits. The conversations written since the last search-indexing pass are indexed here too
(:func:`~distill.cache_view.index_for_search`).

    python -m distill.cache_writer CACHE SEARCH_BATCH   # what WriterProcess starts; reads commits on stdin
"""

from __future__ import annotations

import asyncio
import contextlib
import marshal
import os
import pickle
import sqlite3
import struct
import sys
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

try:
    import fcntl
except ImportError:  # Windows: pipes keep their size
    fcntl = None  # type: ignore[assignment]

from . import cache_view
from .cache_file import connect_for_writing
from .cache_view import FINISHED_UPDATE, ViewRows, index_for_search
from .errors import CacheError
from .sqlite_rows import insert_rows

WRITER_NICE = 5  # the writer's CPU weight: a third of the run's (see run_in_the_background)
LENGTH = struct.Struct(">I")  # each message is its length, then its encoding (see encode)
PIPE_BYTES = 1 << 20
SPEND_UPSERT = (
    "INSERT INTO spending VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(run_id) DO UPDATE SET usd = usd + excluded.usd, "
    "requests = requests + excluded.requests, prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
    "completion_tokens = completion_tokens + excluded.completion_tokens, updated = excluded.updated"
)
RESPONSE_INSERT = "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
FAILURE_INSERT = "INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?)"
CONVERSATION_INSERT = (
    "INSERT OR REPLACE INTO conversations (run_id, position, id, source, data) VALUES (?, ?, ?, ?, ?)"
)
COMPLETE_INSERT = (
    "INSERT OR REPLACE INTO conversations (run_id, position, id, source, data, finished, failed_key, prompt_tokens, "
    "answer_tokens, longest_answer) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class CommitGroup(NamedTuple):
    """The rows of one group commit, as :mod:`distill.cache_commits` queued them."""

    responses: list[tuple[Any, ...]]
    failures: list[tuple[Any, ...]]
    conversations: list[tuple[Any, ...]]  # input rows without marks (CONVERSATION_INSERT)
    complete: list[tuple[Any, ...]]  # input rows with their marks (COMPLETE_INSERT)
    finished: list[tuple[Any, ...]]  # marks of rows written before (FINISHED_UPDATE)
    spend: list[tuple[Any, ...]]
    viewed: ViewRows
    failures_possible: bool  # False while the failures table is empty: an answer deletes none


def write_group(db: sqlite3.Connection, group: CommitGroup) -> int:
    """Write ``group`` in one transaction (the write lock taken first, waiting for it as long as the connection's
    busy timeout says); returns how many conversation rows it wrote."""
    db.execute("BEGIN IMMEDIATE")
    try:
        if group.responses:
            insert_rows(db, RESPONSE_INSERT, group.responses)
            if group.failures_possible:
                db.executemany("DELETE FROM failures WHERE key = ?", [(r[0],) for r in group.responses])
        if group.failures:
            insert_rows(db, FAILURE_INSERT, group.failures)
        if group.conversations:
            insert_rows(db, CONVERSATION_INSERT, group.conversations)
        if group.complete:
            insert_rows(db, COMPLETE_INSERT, group.complete)
        if group.finished:
            db.executemany(FINISHED_UPDATE, group.finished)
        if group.spend:
            db.executemany(SPEND_UPSERT, group.spend)
        if group.viewed:
            group.viewed.write(db)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return len(group.conversations) + len(group.complete)


def encode(message: tuple[Any, ...]) -> bytes:
    """A message for the pipe: ``marshal`` (the rows are tuples of str, bytes, numbers and None; the writer runs
    this interpreter), which encodes a group in half the time ``pickle`` takes; ``pickle`` for anything else."""
    if message[0] == "commit":
        group: CommitGroup = message[1]
        viewed = group.viewed
        plain = (*group[:6], (viewed.attempts, viewed.failed, viewed.rejects), group.failures_possible)
        message = ("commit", plain)
    try:
        return b"m" + marshal.dumps(message)
    except ValueError:  # a value marshal does not know (a subclass of str or int, say)
        return b"p" + pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def decode(payload: bytes) -> tuple[Any, ...]:
    """The message :func:`encode` made of ``payload``."""
    message = marshal.loads(payload[1:]) if payload[:1] == b"m" else pickle.loads(payload[1:])
    if message[0] == "commit":
        *tables, viewed, failures_possible = message[1]
        message = ("commit", CommitGroup(*tables, ViewRows(*viewed), failures_possible))
    return message


class WriterProcess:
    """The parent's side: ``await commit(group)`` returns once ``group`` is committed, one group at a time."""

    def __init__(self, path: Path, process: asyncio.subprocess.Process) -> None:
        self.path = path
        self._process = process
        self._turn = asyncio.Lock()

    @classmethod
    async def start(cls, path: Path) -> WriterProcess:
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                __name__,
                os.fspath(path),
                str(cache_view.SEARCH_BATCH),  # read now: a test may set it
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                start_new_session=True,  # Ctrl-C is the run's to handle; it closes the writer
            )
        except OSError as e:
            raise CacheError(f"cannot start the cache's writer process for {path}: {e}") from None
        _widen(process.stdin)
        return cls(path, process)

    async def commit(self, group: CommitGroup) -> None:
        """Write ``group``; an SQLite error of the writer is raised here, as the same ``sqlite3`` class."""
        await self._call(("commit", group))

    async def close(self) -> None:
        """Index what is left for search, close the writer's connection and wait for the process to end."""
        try:
            if self._process.returncode is None:
                await self._call(("close",))
        finally:
            if self._process.stdin is not None:
                self._process.stdin.close()
            await self._process.wait()

    async def _call(self, message: tuple[Any, ...]) -> None:
        payload = encode(message)
        process = self._process
        assert process.stdin is not None and process.stdout is not None
        async with self._turn:
            try:
                process.stdin.write(LENGTH.pack(len(payload)))
                process.stdin.write(payload)
                (size,) = LENGTH.unpack(await process.stdout.readexactly(LENGTH.size))
                _, reply = decode(await process.stdout.readexactly(size))
            except (asyncio.IncompleteReadError, ConnectionError):
                status = await process.wait()
                raise CacheError(
                    f"the writer process of the cache {self.path} ended (exit status {status}) before "
                    "committing; what it committed is kept: run the same command again"
                ) from None
        if reply is not None:
            kind, text = reply
            error = getattr(sqlite3, kind, None)
            if not (isinstance(error, type) and issubclass(error, sqlite3.Error)):
                error = sqlite3.DatabaseError
            raise error(text)


def _widen(stdin: asyncio.StreamWriter | None) -> None:
    """Let a whole group commit fit in the pipe (Linux: 64 KiB by default), so that sending one is one write."""
    pipe = stdin.get_extra_info("pipe") if stdin is not None else None
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl is not None else None
    if pipe is not None and set_size is not None:
        # past the system's pipe-max-size this fails: the default size serves, in more writes
        with contextlib.suppress(OSError):
            fcntl.fcntl(pipe.fileno(), set_size, PIPE_BYTES)


def serve(path: str, search_batch: int, source: BinaryIO, sink: BinaryIO) -> None:
    """The child's loop: commit each group read from ``source``, answer on ``sink``, until "close" or the end;
    index the conversations written for search once ``search_batch`` are waiting."""
    db = connect_for_writing(Path(path))
    unindexed = 0
    try:
        while (message := _read(source)) is not None:
            reply: tuple[str, str] | None = None
            try:
                if message[0] == "close":
                    with contextlib.suppress(sqlite3.Error):  # the next run's pass indexes what is left
                        index_for_search(db)
                    _answer(sink, None)
                    return
                unindexed += write_group(db, message[1])
            except sqlite3.Error as e:
                reply = (type(e).__name__, str(e))
            _answer(sink, reply)
            if unindexed >= search_batch:
                # after the answer: the group is committed whatever the pass does, and one that fails is
                # tried again after the next commit (or at the close, or by the next run)
                with contextlib.suppress(sqlite3.Error):
                    index_for_search(db)
                    unindexed = 0
    finally:
        db.close()


def _read(source: BinaryIO) -> tuple[Any, ...] | None:
    """The next message, or None when the parent is gone (a message it did not finish sending is dropped)."""
    head = source.read(LENGTH.size)
    if len(head) < LENGTH.size:
        return None
    (size,) = LENGTH.unpack(head)
    payload = source.read(size)
    return decode(payload) if len(payload) == size else None


def _answer(sink: BinaryIO, reply: tuple[str, str] | None) -> None:
    payload = encode(("reply", reply))
    with contextlib.suppress(BrokenPipeError):  # the parent is gone; what it sent is committed all the same
        sink.write(LENGTH.pack(len(payload)) + payload)
        sink.flush()


def run_in_the_background() -> None:
    """Give this process a third of the run's share of a CPU they both want (nice 5; elsewhere nothing changes).

    Commits can wait: rows queue in the run until the writer takes them, and a run that outpaces it waits for
    room (:meth:`~distill.cache_commits.GroupCommits.room`). The cores are the event loop's and, on one machine,
    a local teacher's. The weight is set twice because Linux weighs either tasks or, with autogroups, sessions
    (this process leads its own): its nice value, and its session's autogroup. Measured at thousands of answers
    a second on two cores (issue 12): the event loop ran 96 to 98% of the sending time (95 to 96% beside a
    ``SCHED_IDLE`` writer, which in a session of its own weighs as much as the run). ``SCHED_IDLE`` also let the
    writer starve whenever two busy processes shared the run's session or autogroups were off (containers):
    20,000 conversations beside two busy processes took 106 s instead of 6.5 with autogroups off; at nice 5,
    5.0 to 5.5 s with autogroups on (6.5 s at nice 10 with them off). The writer needs about 0.2 of the run's
    CPU time and nice 5 gives it 0.33 of a CPU they both want.
    """
    with contextlib.suppress(OSError, AttributeError):  # no os.nice on Windows
        os.nice(WRITER_NICE)
    # the session's weight only when the session is this process's own, never the run's
    if hasattr(os, "getsid") and os.getsid(0) == os.getpid():
        with (
            contextlib.suppress(OSError),
            open("/proc/self/autogroup", "w") as group,
        ):  # absent: no autogroups
            group.write(str(WRITER_NICE))


if __name__ == "__main__":
    run_in_the_background()
    serve(sys.argv[1], int(sys.argv[2]), sys.stdin.buffer, sys.stdout.buffer)
