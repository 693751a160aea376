"""The record of uploaded files and fine-tune jobs, so running the same ``distill train`` twice pays once.

A small SQLite database (``jobs.sqlite3``) holds two tables:

* ``uploads``: which file id the service gave a file, keyed by (API base URL, the file's sha256, purpose). A
  re-run with the same bytes reuses the id instead of uploading again.
* ``jobs``: every job started, with the *request key*: the sha256 of everything that determines the job
  (back-end, API base, base model, training and validation files' hashes, hyper-parameters). A re-run with the
  same key re-attaches to the running job or reports the finished one.

Secrets are never stored: the W&B key is only named (the environment variable it is read from), the API key not
at all. Where the database lives: ``--jobs-db`` / ``DISTILL_JOBS_DB``, else ``$XDG_STATE_HOME/distill/jobs.sqlite3``
(``~/.local/state/distill/jobs.sqlite3``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.errors import CacheError, UsageError

JOBS_DB_ENV = "DISTILL_JOBS_DB"
SCHEMA_VERSION = 1
TERMINAL_STATUSES = frozenset({"completed", "cancelled", "error", "user_error"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS uploads (
    base_url TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    purpose TEXT NOT NULL,
    file_id TEXT NOT NULL,
    filename TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    status TEXT NOT NULL,
    uploaded_at REAL NOT NULL,
    PRIMARY KEY (base_url, sha256, purpose)
);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT NOT NULL,
    base_url TEXT NOT NULL,
    backend TEXT NOT NULL,
    request_key TEXT NOT NULL,
    model TEXT NOT NULL,
    training_file TEXT NOT NULL,
    training_sha256 TEXT NOT NULL,
    options TEXT NOT NULL,
    status TEXT NOT NULL,
    output_model TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (base_url, job_id)
);
CREATE INDEX IF NOT EXISTS jobs_by_request ON jobs (base_url, request_key, created_at);
"""


@contextmanager
def open_record(path: Path, prepare: Callable[[sqlite3.Connection], None]) -> Iterator[sqlite3.Connection]:
    """A connection to the jobs database at ``path``, prepared (schema) and committed on leaving; its errors as
    :class:`CacheError` naming ``--jobs-db``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=30)
    except (OSError, sqlite3.Error) as e:
        raise CacheError(f"cannot open the jobs record {path}: {e}; pass --jobs-db PATH") from None
    try:
        conn.row_factory = sqlite3.Row
        prepare(conn)
        with conn:
            yield conn
    except sqlite3.DatabaseError as e:
        raise CacheError(
            f"the jobs record {path} is unusable ({e}); move it away or pass --jobs-db PATH"
        ) from None
    finally:
        conn.close()


def default_jobs_path() -> Path:
    """``DISTILL_JOBS_DB`` if set, else ``$XDG_STATE_HOME/distill/jobs.sqlite3`` (``~/.local/state/...``)."""
    explicit = os.environ.get(JOBS_DB_ENV)
    if explicit:
        return Path(explicit)
    state_home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state_home) / "distill" / "jobs.sqlite3"


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes (the same checksum the Together upload sends)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}; check --file / --validation-file") from None
    return digest.hexdigest()


def request_key(identity: Mapping[str, Any]) -> str:
    """The sha256 of a job's identity, canonical JSON (sorted keys), so equal requests get equal keys."""
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class UploadRecord:
    """A file the service already holds."""

    base_url: str
    sha256: str
    purpose: str
    file_id: str
    filename: str
    bytes: int
    status: str
    uploaded_at: float


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job this machine started. ``options`` is the job's identity minus the file hashes (no secrets)."""

    job_id: str
    base_url: str
    backend: str
    request_key: str
    model: str
    training_file: str
    training_sha256: str
    options: dict[str, Any]
    status: str
    output_model: str | None
    created_at: float
    updated_at: float

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES


class JobStore:
    """The SQLite record of uploads and jobs. Each call opens, commits and closes: safe across processes."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_jobs_path()

    def _connect(self) -> AbstractContextManager[sqlite3.Connection]:
        return open_record(self.path, self._ensure_schema)

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        with conn:
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row["value"]) > SCHEMA_VERSION:
                raise CacheError(
                    f"the jobs record {self.path} was written by a newer distill (schema {row['value']}); "
                    "upgrade distill or pass --jobs-db PATH"
                )

    # uploads

    def find_upload(self, base_url: str, sha256: str, purpose: str) -> UploadRecord | None:
        """The recorded upload of these bytes to this API, if any."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT * FROM uploads WHERE base_url = ? AND sha256 = ? AND purpose = ?",
                (base_url, sha256, purpose),
            ).fetchone()
        return UploadRecord(**dict(row)) if row else None

    def record_upload(self, record: UploadRecord) -> None:
        """Remember (or replace) the upload of a file."""
        with self._connect() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO uploads VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.base_url,
                    record.sha256,
                    record.purpose,
                    record.file_id,
                    record.filename,
                    record.bytes,
                    record.status,
                    record.uploaded_at,
                ),
            )

    def forget_upload(self, base_url: str, sha256: str, purpose: str) -> None:
        """Drop an upload the service no longer has."""
        with self._connect() as conn:
            conn.execute(
                "DELETE FROM uploads WHERE base_url = ? AND sha256 = ? AND purpose = ?",
                (base_url, sha256, purpose),
            )

    # jobs

    def record_job(self, record: JobRecord) -> None:
        """Remember a job just created."""
        with self._connect() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.job_id,
                    record.base_url,
                    record.backend,
                    record.request_key,
                    record.model,
                    record.training_file,
                    record.training_sha256,
                    json.dumps(record.options, sort_keys=True),
                    record.status,
                    record.output_model,
                    record.created_at,
                    record.updated_at,
                ),
            )

    def update_job(self, base_url: str, job_id: str, status: str, output_model: str | None) -> None:
        """Store the latest status (and output model name, once known) of a job."""
        with self._connect() as conn:
            conn.execute(
                "UPDATE jobs SET status = ?, output_model = COALESCE(?, output_model), updated_at = ? "
                "WHERE base_url = ? AND job_id = ?",
                (status, output_model, time.time(), base_url, job_id),
            )

    def latest_job(self, base_url: str, key: str) -> JobRecord | None:
        """The most recent job started for this request key on this API, if any."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT * FROM jobs WHERE base_url = ? AND request_key = ? ORDER BY created_at DESC LIMIT 1",
                (base_url, key),
            ).fetchone()
        return _job_from_row(row) if row else None

    def jobs(self) -> list[JobRecord]:
        """Every recorded job, oldest first (none when there is no record yet: nothing is created)."""
        if not self.path.exists():
            return []
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM jobs ORDER BY created_at").fetchall()
        return [_job_from_row(row) for row in rows]


def _job_from_row(row: sqlite3.Row) -> JobRecord:
    values = dict(row)
    values["options"] = json.loads(values["options"])
    return JobRecord(**values)
