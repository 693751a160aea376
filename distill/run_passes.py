"""Cache migration 7 (issue 15): which stretches of time belong to which run, and which attempts were batch lines.

- ``run_passes``: one row per invocation of a run (``started``, ``ended``; ``ended`` stays NULL when the process
  died). One run at a time writes a cache (``CACHE.lock``), so every attempt and answer made between a pass's
  start and its end belongs to that pass's run; a pass that never ended runs until the next pass of any run
  starts. The viewer draws a run's charts over its passes only (:func:`spans`), without a run id on every
  attempt and answer (which the hot path would pay for). A cache from before this migration knows only each
  run's last pass (``runs.updated`` to ``runs.ended``);
- ``attempts.batch_id``: the batch a request went in, for attempts a ``--batch`` run recorded from its result
  files. A Batch API reports no time or latency per request: such an attempt is dated when distill uploaded the
  batch, and its ``latency`` is the batch's turnaround as distill saw it (uploaded to collected), which the
  viewer says in those words.
"""

from __future__ import annotations

import math
import sqlite3
import time

MIGRATION = """
    CREATE TABLE run_passes (
        run_id TEXT NOT NULL,
        started REAL NOT NULL,
        ended REAL,
        PRIMARY KEY (run_id, started)
    ) WITHOUT ROWID;
    INSERT OR IGNORE INTO run_passes SELECT id, updated, ended FROM runs;
    ALTER TABLE attempts ADD COLUMN batch_id TEXT;
"""

START = "INSERT OR IGNORE INTO run_passes (run_id, started) VALUES (?, ?)"
END = (
    "UPDATE run_passes SET ended = ?1 WHERE run_id = ?2 "
    "AND started = (SELECT max(started) FROM run_passes WHERE run_id = ?2)"
)


def record_start(db: sqlite3.Connection, run_id: str, at: float | None = None) -> None:
    db.execute(START, (run_id, time.time() if at is None else at))


def record_end(db: sqlite3.Connection, run_id: str, at: float | None = None) -> None:
    db.execute(END, (time.time() if at is None else at, run_id))


Span = tuple[float, float]


def spans(conn: sqlite3.Connection, run_id: str) -> list[Span]:
    """The stretches of time ``run_id`` ran in, merged where they touch (``inf`` for a pass still running or
    killed, up to the next pass of any run). A run with no pass recorded (merged in from a cache that kept none)
    counts from its first start to its last end."""
    passes = conn.execute("SELECT run_id, started, ended FROM run_passes ORDER BY started").fetchall()
    if not any(owner == run_id for owner, _, _ in passes):
        row = conn.execute("SELECT created, coalesce(ended, ?) FROM runs WHERE id = ?", (math.inf, run_id))
        return [tuple(span) for span in row]
    found: list[Span] = []
    for i, (owner, started, ended) in enumerate(passes):
        if owner != run_id:
            continue
        if ended is None:
            ended = passes[i + 1][1] if i + 1 < len(passes) else math.inf
        if found and started <= found[-1][1]:
            found[-1] = (found[-1][0], max(found[-1][1], ended))
        else:
            found.append((started, ended))
    return found


def within(column: str, run_spans: list[Span] | None) -> tuple[str, tuple[float, ...]]:
    """An SQL condition (and its parameters) that ``column`` falls in one of ``run_spans``; None: always true."""
    if run_spans is None:
        return "1", ()
    if not run_spans:
        return "0", ()
    terms = " OR ".join(f"({column} >= ? AND {column} <= ?)" for _ in run_spans)
    params = tuple(v if v != math.inf else 1e300 for span in run_spans for v in span)
    return f"({terms})", params
