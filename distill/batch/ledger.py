"""The batches a run has in flight, recorded in the cache's ``batches`` table so an interrupted run re-attaches.

A row is written as soon as its input file is uploaded (``uploaded``: the batch may or may not have been
created), updated the moment the provider returns the batch id (``submitted``), and closed when the results are
in the cache (``collected``), when the provider failed the whole batch (``failed``), or when an interrupted
upload left nothing to follow (``dropped``). Rows that are ``uploaded`` or ``submitted`` are open: the next run
with the same cache follows them before it submits anything new.

It uses its own synchronous connection to the cache file (WAL mode lets it sit beside the run's).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from distill.requests import TeacherResponse

OPEN = ("uploaded", "submitted")


@dataclass(frozen=True, slots=True)
class Row:
    part: str
    run_id: str
    provider: str
    requests: int
    input_file_id: str | None
    batch_id: str | None
    status: str


class Ledger:
    """The ``batches`` table of one cache, and read access to its answers."""

    def __init__(self, cache_path: Path) -> None:
        self.conn = sqlite3.connect(cache_path, isolation_level=None)
        self.conn.execute("PRAGMA busy_timeout = 10000")

    def close(self) -> None:
        self.conn.close()

    def open_rows(self, run_id: str | None = None) -> list[Row]:
        """Batches not yet collected (of ``run_id``, or of every run)."""
        marks = ",".join("?" * len(OPEN))
        query = (
            "SELECT part, run_id, provider, requests, input_file_id, batch_id, status FROM batches "
            f"WHERE status IN ({marks})"
        )
        args: list[str] = list(OPEN)
        if run_id is not None:
            query += " AND run_id = ?"
            args.append(run_id)
        return [Row(*r) for r in self.conn.execute(query + " ORDER BY created, part", args)]

    def uploaded(self, part: Path, run_id: str, provider: str, requests: int, input_file_id: str) -> None:
        now = time.time()
        self.conn.execute(
            "INSERT OR REPLACE INTO batches (part, run_id, provider, requests, input_file_id, batch_id, status, "
            "created, updated) VALUES (?, ?, ?, ?, ?, NULL, 'uploaded', ?, ?)",
            (str(part), run_id, provider, requests, input_file_id, now, now),
        )

    def submitted(self, part: str, batch_id: str) -> None:
        self.conn.execute(
            "UPDATE batches SET batch_id = ?, status = 'submitted', updated = ? WHERE part = ?",
            (batch_id, time.time(), part),
        )

    def close_row(self, part: str, status: str) -> None:
        self.conn.execute(
            "UPDATE batches SET status = ?, updated = ? WHERE part = ?", (status, time.time(), part)
        )

    def response(self, key: str) -> TeacherResponse | None:
        """The stored answer to ``key`` with its finish reason and usage."""
        row = self.conn.execute(
            "SELECT text, finish_reason, prompt_tokens, completion_tokens FROM responses WHERE key = ?",
            (key,),
        ).fetchone()
        return TeacherResponse(*row) if row is not None else None

    def uploaded_at(self, part: str) -> float | None:
        """When the input file ``part`` was uploaded (by this run or the one it re-attached to)."""
        row = self.conn.execute("SELECT created FROM batches WHERE part = ?", (part,)).fetchone()
        return row[0] if row is not None else None

    def answer(self, key: str) -> str | None:
        row = self.conn.execute("SELECT text FROM responses WHERE key = ?", (key,)).fetchone()
        return row[0] if row is not None else None

    def failure(self, key: str) -> str | None:
        row = self.conn.execute("SELECT reason FROM failures WHERE key = ?", (key,)).fetchone()
        return row[0] if row is not None else None
