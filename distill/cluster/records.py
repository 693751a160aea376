"""What a cluster run keeps in the run's own ``--cache``, beside the merged shard caches: the rate and the spend.

The broker learned one rate for the whole cluster: it is stored (:mod:`distill.learned_limits`) with the
broker's observation windows, so the next run, with Ray or without, starts from it, as after a single run; and a
cluster run starts from the rate an earlier run stored there. The shards record what their answers cost in their
own caches; as those are merged again on every run of the same command, the run's cache gets only the
difference this invocation made, so ``--budget`` over invocations counts each dollar once.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from .. import learned_limits
from ..rate_watch import WindowRecord
from ..stats import RunStats

Spend = tuple[float, int, int, int]  # usd, requests, prompt tokens, completion tokens
NOTHING: Spend = (0.0, 0, 0, 0)


def stored_rate(cache: Path, base_url: str, model: str) -> float | None:
    """The per-minute rate an earlier run learned for ``model`` at ``base_url``, kept in ``cache``."""
    with contextlib.closing(sqlite3.connect(cache)) as conn:
        return learned_limits.stored_rpm(conn, base_url, model)


def keep_rate(cache: Path, run_id: str, base_url: str, model: str, broker: dict) -> None:
    """Store what the broker learned (``broker``: its final state, with its windows) in ``cache``."""
    with contextlib.closing(sqlite3.connect(cache, isolation_level=None)) as conn:
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("BEGIN IMMEDIATE")
        for fields in broker.get("windows", ()):
            window = WindowRecord(*fields)
            if window.sent or window.limited or window.shed:
                learned_limits.record_window(conn, run_id, base_url, model, window)
        if broker.get("learned_rpm"):
            learned_limits.save(conn, base_url, model, broker["learned_rpm"], broker["source"])
        conn.execute("COMMIT")


def rate_of(stats: RunStats, broker: dict) -> None:
    """The run's rate and its source, as the progress line and the summary show them: the broker's."""
    stats.learned_rpm = broker["rpm"]
    stats.rate_source = broker["source"]


def shard_spending(caches: Iterable[Path], run_id: str) -> Spend:
    """What the shard caches say run ``run_id`` spent, summed (nothing for a cache not written yet)."""
    total = list(NOTHING)
    for cache in caches:
        if not cache.exists():
            continue
        with contextlib.closing(sqlite3.connect(f"file:{cache}?mode=ro", uri=True)) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "spending" not in tables:
                continue
            row = conn.execute(
                "SELECT usd, requests, prompt_tokens, completion_tokens FROM spending WHERE run_id = ?",
                (run_id,),
            ).fetchone()
        for i, value in enumerate(row or NOTHING):
            total[i] += value
    return (total[0], int(total[1]), int(total[2]), int(total[3]))


def add_spending(cache: Path, run_id: str, before: Spend, after: Spend) -> None:
    """Add to ``cache`` what the shards spent between ``before`` and ``after`` (this invocation)."""
    usd, requests, prompt, completion = (a - b for a, b in zip(after, before, strict=True))
    if not requests and not usd:
        return
    with contextlib.closing(sqlite3.connect(cache, isolation_level=None)) as conn:
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute(
            "INSERT INTO spending VALUES (?, ?, ?, ?, ?, strftime('%s', 'now')) ON CONFLICT(run_id) DO UPDATE SET "
            "usd = usd + excluded.usd, requests = requests + excluded.requests, "
            "prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
            "completion_tokens = completion_tokens + excluded.completion_tokens, updated = excluded.updated",
            (run_id, usd, requests, prompt, completion),
        )
