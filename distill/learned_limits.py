"""The rates runs learned, kept in the cache so the next run (or a resume) starts there instead of probing again.

Two tables (cache migration 4): ``rate_limits`` holds one learned rate per (base URL, model), replaced as a run
learns; ``rate_windows`` holds one row per observation window of every run (sent, accepted, 429s, 503s and the
rate in force), for ``distill stats`` and anyone charting how a run found its limit.
"""

from __future__ import annotations

import sqlite3
import time
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .rate_watch import WindowRecord


class Cache(Protocol):
    """What these functions need of :class:`distill.cache.Cache` (which imports this module for its migration)."""

    def execute(self, sql: str, params: tuple = ...) -> sqlite3.Cursor: ...


MIGRATION = """
    CREATE TABLE rate_limits (
        base_url TEXT NOT NULL,
        model TEXT NOT NULL,
        rpm REAL NOT NULL,
        source TEXT NOT NULL,
        updated REAL NOT NULL,
        PRIMARY KEY (base_url, model)
    );
    CREATE TABLE rate_windows (
        id INTEGER PRIMARY KEY,
        run_id TEXT,
        base_url TEXT NOT NULL,
        model TEXT NOT NULL,
        at REAL NOT NULL,
        seconds REAL NOT NULL,
        sent INTEGER NOT NULL,
        accepted INTEGER NOT NULL,
        limited INTEGER NOT NULL,
        shed INTEGER NOT NULL,
        faults INTEGER NOT NULL,
        rpm REAL NOT NULL
    );
    CREATE INDEX rate_windows_by_server ON rate_windows (base_url, model, at);
"""


def stored_rpm(cache: Cache, base_url: str, model: str) -> float | None:
    """The per-minute rate a run learned for ``model`` at ``base_url``, or None."""
    row = cache.execute(
        "SELECT rpm FROM rate_limits WHERE base_url = ? AND model = ?", (_url(base_url), model)
    ).fetchone()
    return row[0] if row else None


def save(cache: Cache, base_url: str, model: str, rpm: float, source: str) -> None:
    cache.execute(
        "INSERT INTO rate_limits (base_url, model, rpm, source, updated) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (base_url, model) DO UPDATE SET rpm = excluded.rpm, source = excluded.source, "
        "updated = excluded.updated",
        (_url(base_url), model, rpm, source, time.time()),
    )


def record_window(cache: Cache, run_id: str | None, base_url: str, model: str, w: WindowRecord) -> None:
    cache.execute(
        "INSERT INTO rate_windows (run_id, base_url, model, at, seconds, sent, accepted, limited, shed, faults, "
        "rpm) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            run_id,
            _url(base_url),
            model,
            w.at,
            w.seconds,
            w.sent,
            w.accepted,
            w.limited,
            w.shed,
            w.faults,
            w.rpm,
        ),
    )


def summary(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every learned limit, with its windows' totals, for ``distill stats``."""
    rows = conn.execute(
        "SELECT l.base_url, l.model, l.rpm, l.source, l.updated, count(w.id), coalesce(sum(w.sent), 0), "
        "coalesce(sum(w.limited), 0), coalesce(sum(w.shed), 0) FROM rate_limits l "
        "LEFT JOIN rate_windows w ON w.base_url = l.base_url AND w.model = l.model "
        "GROUP BY l.base_url, l.model ORDER BY l.updated"
    )
    keys = ("base_url", "model", "rpm", "source", "updated", "windows", "sent", "limited", "shed")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def _url(base_url: str) -> str:
    return base_url.rstrip("/")
