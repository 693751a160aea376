"""What ``distill merge`` carries besides answers, runs and conversations: every record a run keeps.

A merged cache must serve ``distill stats``, ``distill view`` and the next run as the cache of one run would, so
these go with the runs and conversations of :mod:`distill.merge` (``src`` is the attached input cache, ``main``
the output):

- the viewer's rows (cache migrations 6 to 8): ``attempts`` (the failed attempts' timings, and the batch of a
  batch line; an answered attempt's time and latency are on its answer's row, carried with it), ``rejects``, each conversation's ``finished`` mark, tokens and ``failed_key``, ``runs.ended`` and each
  run's passes in time (``run_passes``: a cluster run's are its shards' passes);
- the rate controller's rows (migration 4): ``rate_windows`` (added once: a window already there, the same
  moment of the same server and run, is not added again, so merging the same cache twice adds nothing) and
  ``rate_limits`` (the most recently learned rate of each server and model wins).

Spending (migration 5) is summed per run by :mod:`distill.merge` itself. A cache from before a migration lacks
its tables or columns: what it does not have is not carried, and the rest is.
"""

from __future__ import annotations

import sqlite3

CONVERSATION_COLUMNS = ("finished", "failed_key", "prompt_tokens", "answer_tokens", "longest_answer")
# an answer's row, with the time and latency of the attempt that got it (migration 8) where the input has them
RESPONSE_COLUMNS = ("key", "request", "text", "finish_reason", "prompt_tokens", "completion_tokens", "created",
                    "sent_at", "latency")  # fmt: skip
ATTEMPT_COLUMNS = ("key", "at", "status", "error", "latency", "batch_id")
WINDOW_COLUMNS = "base_url, model, at, seconds, sent, accepted, limited, shed, faults, rpm"


def tables(conn: sqlite3.Connection, schema: str) -> set[str]:
    return {r[0] for r in conn.execute(f"SELECT name FROM {schema}.sqlite_master WHERE type = 'table'")}


def columns(conn: sqlite3.Connection, schema: str, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA {schema}.table_info({table})")}


def carry_conversations(conn: sqlite3.Connection, target: str, run_id: str) -> int:
    """Copy run ``run_id``'s conversations of ``src`` into run ``target``, with what the input has of their
    marks and tokens; a position already there is kept. Returns how many were added."""
    known = columns(conn, "src", "conversations")
    names = ", ".join(("position", "id", "source", "data", *(c for c in CONVERSATION_COLUMNS if c in known)))
    added = conn.execute(
        f"INSERT OR IGNORE INTO main.conversations (run_id, {names}) "
        f"SELECT ?, {names} FROM src.conversations WHERE run_id = ?",
        (target, run_id),
    )
    return added.rowcount


def carry_run_records(conn: sqlite3.Connection, target: str, run_id: str) -> None:
    """Run ``run_id``'s end, passes, rejects and rate windows, as records of run ``target``."""
    names = {"target": target, "run_id": run_id}
    if "ended" in columns(conn, "src", "runs"):
        (ended,) = conn.execute("SELECT ended FROM src.runs WHERE id = ?", (run_id,)).fetchone()
        conn.execute(
            "UPDATE main.runs SET ended = ? WHERE id = ? AND ? IS NOT NULL AND (ended IS NULL OR ended < ?)",
            (ended, target, ended, ended),
        )
    present = tables(conn, "src")
    if "rejects" in present:
        conn.execute(
            "INSERT OR IGNORE INTO main.rejects (run_id, source, reason, record) "
            "SELECT :target, source, reason, record FROM src.rejects WHERE run_id = :run_id",
            names,
        )
    if "rate_windows" in present:
        _carry_windows(conn, ":target", "s.run_id = :run_id", names)
    if "run_passes" in present:
        conn.execute(
            "INSERT OR IGNORE INTO main.run_passes (run_id, started, ended) "
            "SELECT :target, started, ended FROM src.run_passes WHERE run_id = :run_id",
            names,
        )


def carry_shared_records(conn: sqlite3.Connection) -> None:
    """What is not a run's: every attempt, the learned rates, and rate windows of runs the input does not hold."""
    present = tables(conn, "src")
    if "attempts" in present:
        names = ", ".join(c for c in ATTEMPT_COLUMNS if c in columns(conn, "src", "attempts"))
        conn.execute(f"INSERT OR IGNORE INTO main.attempts ({names}) SELECT {names} FROM src.attempts")
    if "rate_limits" in present:
        conn.execute(
            "INSERT INTO main.rate_limits (base_url, model, rpm, source, updated) "
            "SELECT base_url, model, rpm, source, updated FROM src.rate_limits WHERE true "
            "ON CONFLICT (base_url, model) DO UPDATE SET rpm = excluded.rpm, source = excluded.source, "
            "updated = excluded.updated WHERE excluded.updated > rate_limits.updated"
        )
    if "rate_windows" in present:
        _carry_windows(
            conn, "s.run_id", "(s.run_id IS NULL OR s.run_id NOT IN (SELECT id FROM src.runs))", {}
        )


def _carry_windows(conn: sqlite3.Connection, run: str, where: str, params: dict) -> None:
    """Rate windows of ``src`` matching ``where``, under run ``run`` (an SQL expression), each added once."""
    conn.execute(
        f"INSERT INTO main.rate_windows (run_id, {WINDOW_COLUMNS}) SELECT {run}, "
        + ", ".join(f"s.{c.strip()}" for c in WINDOW_COLUMNS.split(","))
        + f" FROM src.rate_windows s WHERE {where} AND NOT EXISTS (SELECT 1 FROM main.rate_windows m "
        f"WHERE m.base_url = s.base_url AND m.model = s.model AND m.at = s.at AND m.run_id IS {run})",
        params,
    )
