"""The cache file itself: its schema and migrations, the checks before anything opens it, and the run's lock.

The schema is versioned with ``PRAGMA user_version`` and upgraded by the numbered ``MIGRATIONS``; the file is
marked with ``PRAGMA application_id`` so a foreign database is refused instead of written over. One run at a time
holds ``CACHE.lock`` (an advisory lock that the OS frees when the process dies, even by SIGKILL). The queries of
a run are :class:`distill.cache.Cache`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from . import learned_limits, run_passes
from .cache_view import ANSWER_TIMING_MIGRATION, VIEW_MIGRATION
from .errors import CacheError

APPLICATION_ID = 0x64737431  # "dst1"
SQLITE_HEADER = b"SQLite format 3\x00"

MIGRATIONS: tuple[str, ...] = (
    # 1: the first schema
    """
    CREATE TABLE responses (
        key TEXT PRIMARY KEY,
        request BLOB NOT NULL,
        text TEXT NOT NULL,
        finish_reason TEXT,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        created REAL NOT NULL
    );
    CREATE TABLE failures (
        key TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        status INTEGER,
        updated REAL NOT NULL
    );
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        input TEXT NOT NULL,
        settings BLOB NOT NULL,
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE conversations (
        run_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        id TEXT NOT NULL,
        source TEXT NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (run_id, position)
    ) WITHOUT ROWID;
    """,
    # 2: batches in flight at a provider's Batch API (distill.batch.ledger), so an interrupted run re-attaches
    """
    CREATE TABLE batches (
        part TEXT PRIMARY KEY,
        run_id TEXT NOT NULL,
        provider TEXT NOT NULL,
        requests INTEGER NOT NULL,
        input_file_id TEXT,
        batch_id TEXT,
        status TEXT NOT NULL,
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    """,
    # 3: conversations whose every turn is answered, so a rerun skips them without planning their requests
    """
    ALTER TABLE conversations ADD COLUMN finished INTEGER NOT NULL DEFAULT 0;
    """,
    # migration 4: learned rate limits and the observation windows that found them (issue 11)
    learned_limits.MIGRATION,
    # migration 5: what each run's settings have spent, so --budget caps the total over invocations (issue 13)
    """
    CREATE TABLE spending (
        run_id TEXT PRIMARY KEY,
        usd REAL NOT NULL,
        requests INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        updated REAL NOT NULL
    );
    """,
    # migration 6: what `distill view` shows (issue 15); the SQL is in distill/cache_view.py
    VIEW_MIGRATION,
    # migration 7: each run's passes in time and the batch of a batch line's attempt, for the viewer (issue 15)
    run_passes.MIGRATION,
    # migration 8: the answered attempt's time and latency on the responses row (issue 12), in cache_view.py
    ANSWER_TIMING_MIGRATION,
)
SCHEMA_VERSION = len(MIGRATIONS)


def check_file(path: Path) -> None:
    """Refuse a file that exists but is not a distill cache, before anything opens it for writing."""
    if path.is_dir():
        raise CacheError(f"cache {path} is a directory; pass a file path to --cache")
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb") as f:
        header = f.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:
        raise CacheError(
            f"{path} is not a SQLite database; pass another --cache (distill will not overwrite it)"
        )


def check_cache_writable(path: Path) -> None:
    """A CacheError saying the cache is read-only when it (or its directory, where SQLite keeps its journal and
    distill its lock) cannot be written."""
    directory = path.parent if str(path.parent) else Path(".")
    if path.exists() and not writable(path):
        raise CacheError(
            f"cache {path} is read-only: a run writes every answer to it; make it writable (chmod u+w) or pass "
            "another --cache ('distill export' and 'distill stats' only read it)"
        )
    if directory.is_dir() and not writable(directory):
        raise CacheError(
            f"the directory of cache {path} is read-only: a run keeps its journal and lock file beside the cache; "
            "pass a --cache in a writable directory"
        )


def writable(path: Path) -> bool:
    """Whether ``path`` may be written, and is not marked read-only (no write bit: root could, but must not)."""
    return os.access(path, os.W_OK) and bool(path.stat().st_mode & 0o222)


def prepare(conn: sqlite3.Connection, path: Path) -> None:
    """Check identity and version, then create or migrate the schema (synchronous: runs on any connection)."""
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    except sqlite3.DatabaseError as e:
        raise CacheError(f"{path} is corrupt or not a database ({e}); pass another --cache") from None
    if app_id != APPLICATION_ID and tables:
        raise CacheError(f"{path} is a SQLite database but not a distill cache; pass another --cache")
    if version > SCHEMA_VERSION:
        raise CacheError(
            f"{path} was written by a newer distill (schema {version}, this one knows {SCHEMA_VERSION}); upgrade distill"
        )
    if tables and version < SCHEMA_VERSION:
        check_whole(conn, path)  # a migration writes: never into a damaged file
    for number in range(version, SCHEMA_VERSION):
        # One transaction for the tables, the version and the mark: a process killed while creating the cache
        # leaves an empty file (used again), never tables without the mark (refused as a foreign database).
        conn.executescript(
            f"BEGIN; {MIGRATIONS[number]}; PRAGMA user_version = {number + 1}; "
            f"PRAGMA application_id = {APPLICATION_ID}; COMMIT;"
        )
    if app_id != APPLICATION_ID:
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.commit()


@contextlib.contextmanager
def reported(path: Path) -> Iterator[None]:
    """Turn an SQLite failure met mid-run (a damaged page, a full disk) into a CacheError naming the file."""
    try:
        yield
    except sqlite3.OperationalError as e:
        if "readonly" in str(e):  # a read-only file system, where permissions did not say so
            raise CacheError(f"cache {path} is read-only ({e}); pass a --cache on a writable disk") from None
        raise _failed(path, e) from None
    except sqlite3.DatabaseError as e:
        raise _failed(path, e) from None


def _failed(path: Path, e: sqlite3.DatabaseError) -> CacheError:
    return CacheError(
        f"the cache {path} failed: {e}. If the file is damaged, move it aside (distill leaves it as it is) "
        "and pass another --cache; if the disk is full, free space and run the same command again"
    )


def check_whole(conn: sqlite3.Connection, path: Path) -> None:
    """Raise CacheError unless SQLite's quick check finds the file whole (it reads every page: use sparingly)."""
    try:
        verdict = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
    except sqlite3.DatabaseError as e:
        verdict = str(e)
    if verdict != "ok":
        raise CacheError(
            f"{path} is damaged ({verdict}); move it aside (distill leaves it as it is) and pass another --cache"
        )


def connect_for_writing(path: Path) -> sqlite3.Connection:
    """A connection that writes to the cache (in WAL mode already): waits for the file's lock, commits without
    waiting for the disk, and leaves transactions to explicit ``BEGIN``s."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA busy_timeout = 10000")
    db.execute("PRAGMA synchronous = NORMAL")
    return db


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A synchronous read connection for export and stats."""
    if not path.exists():
        raise CacheError(f"cache {path} does not exist; pass the --cache file a run wrote")
    check_file(path)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as e:
        raise CacheError(f"{path} is corrupt or not a database ({e})") from None
    if app_id != APPLICATION_ID:
        raise CacheError(f"{path} is not a distill cache")
    if version != SCHEMA_VERSION:
        raise CacheError(
            f"{path} has schema {version}; this distill reads {SCHEMA_VERSION}: run 'distill run' to migrate"
        )
    return conn


class RunLock:
    """An exclusive advisory lock on ``CACHE.lock``: one run writes a cache at a time."""

    def __init__(self, cache_path: Path) -> None:
        self.path = Path(f"{cache_path}.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise CacheError(
                f"cache {self.path.with_suffix('')} is in use by another distill run (pid {holder}); "
                "wait for it to finish or pass another --cache"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
