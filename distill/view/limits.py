"""A run's learned rate limits for its page: the observation windows it recorded (``rate_windows`` of that run)
drawn as its rate over time with the 429s, and the limit kept for its model (``rate_limits``).

A ``--batch`` run sends no live requests, so it records no window: the page says so.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

from .charts import BINS, HEIGHT, MARGIN, WIDTH, Bar, Chart, clock_text, time_buckets

LIMIT_COLUMNS = ("base_url", "model", "rpm", "source", "updated")


@dataclass(slots=True)
class RunLimits:
    """What one run learned of its server's limits."""

    kept: list[dict[str, Any]] = field(default_factory=list)  # rate_limits rows of the run's model
    windows: int = 0
    sent: int = 0
    accepted: int = 0
    limited: int = 0
    shed: int = 0
    last_rpm: float | None = None
    batched: bool = False  # whether it went through a Batch API (which learns no rate)
    chart: Chart | None = None


def run_limits(conn: sqlite3.Connection, run_id: str, model: str) -> RunLimits:
    """The limit kept for ``model`` and the totals and chart of ``run_id``'s windows."""
    found = RunLimits()
    found.kept = [
        dict(zip(LIMIT_COLUMNS, row, strict=True))
        for row in conn.execute(
            f"SELECT {', '.join(LIMIT_COLUMNS)} FROM rate_limits WHERE model = ? ORDER BY updated", (model,)
        )
    ]
    found.windows, found.sent, found.accepted, found.limited, found.shed = conn.execute(
        "SELECT count(*), coalesce(sum(sent), 0), coalesce(sum(accepted), 0), coalesce(sum(limited), 0), "
        "coalesce(sum(shed), 0) FROM rate_windows WHERE run_id = ?",
        (run_id,),
    ).fetchone()
    last = conn.execute(
        "SELECT rpm FROM rate_windows WHERE run_id = ? ORDER BY at DESC LIMIT 1", (run_id,)
    ).fetchone()
    found.last_rpm = last[0] if last else None
    found.chart = rate_chart(conn, run_id)
    found.batched = (
        conn.execute("SELECT 1 FROM batches WHERE run_id = ? LIMIT 1", (run_id,)).fetchone() is not None
    )
    return found


def rate_chart(conn: sqlite3.Connection, run_id: str) -> Chart:
    """The rate in force at the end of each window (a line) over the 429s the windows counted (red bars)."""
    chart = Chart("Rate over time", "the rate this run held per minute, window by window; its 429s in red")
    start, end, rows = time_buckets(
        conn, "rate_windows", "at", "max(rpm), sum(limited)", ("run_id = ?", (run_id,))
    )
    if not rows:
        chart.empty = True
        return chart
    top_rate = max(rpm for _, rpm, _ in rows) or 1.0
    top_limited = max(limited for _, _, limited in rows) or 1
    step = (WIDTH - 2 * MARGIN) / BINS
    room = HEIGHT - 2 * MARGIN
    points = []
    for b, rpm, limited in rows:
        points.append(f"{MARGIN + (b + 0.5) * step:.1f},{HEIGHT - MARGIN - room * rpm / top_rate:.1f}")
        if limited:
            h = room * limited / top_limited
            chart.bars.append(
                Bar(
                    MARGIN + b * step,
                    HEIGHT - MARGIN - h,
                    max(step - 1, 1),
                    h,
                    f"{limited:,} 429s",
                    "limited",
                )
            )
    chart.line = " ".join(points)
    chart.x_labels = (clock_text(start), clock_text(end))
    chart.y_label = f"{top_rate:,.0f} requests/min at most; tallest bar {top_limited:,} 429s"
    return chart
