"""The charts page's figures, computed by grouping in SQL, and drawn as plain SVG (no script, no library).

Each chart is a :class:`Chart`: bars (or a line) already in SVG coordinates, with a tooltip per bar; the template
only places them. Histograms group in SQL (``GROUP BY`` over a bucket number), so a chart over a million answers
sends a few dozen rows to Python.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field

from distill import run_passes
from distill.cache_view import ALL_ATTEMPTS
from distill.cost import Price

WIDTH, HEIGHT, MARGIN = 640, 200, 36
BINS = 30
Where = tuple[str, tuple]
ALL: Where = ("1", ())


@dataclass(frozen=True, slots=True)
class Scope:
    """What a page's charts cover: one run (over the passes it ran in) or, with no run, the whole cache."""

    run_id: str | None
    spans: list[run_passes.Span] | None = None

    @property
    def of(self) -> str:
        return "of this run" if self.run_id else "in the whole cache (every run)"

    @property
    def got(self) -> str:
        if self.run_id is None:
            return "in the whole cache (every run)"
        return "this run received from the teacher (answers it found in the cache are not counted)"

    def where(self, column: str) -> Where:
        return run_passes.within(column, self.spans)


@dataclass(slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    title: str
    kind: str = "ok"
    label: str = ""


@dataclass(slots=True)
class Chart:
    title: str
    note: str
    bars: list[Bar] = field(default_factory=list)
    line: str = ""  # SVG polyline points
    x_labels: tuple[str, str] = ("", "")
    y_label: str = ""
    empty: bool = False
    width: int = WIDTH
    height: int = HEIGHT
    margin: int = MARGIN


def histogram(conn: sqlite3.Connection, title: str, note: str, values_sql: str, params: tuple = ()) -> Chart:
    """A histogram of the numbers ``values_sql`` selects (one column named ``v``), in :data:`BINS` buckets."""
    low, high, n = conn.execute(f"SELECT min(v), max(v), count(v) FROM ({values_sql})", params).fetchone()
    chart = Chart(title, note)
    if not n:
        chart.empty = True
        return chart
    width = max(1, -(-(high - low + 1) // BINS))
    counts = dict(
        conn.execute(
            f"SELECT (v - ?) / ? AS b, count(*) FROM ({values_sql}) WHERE v IS NOT NULL GROUP BY b",
            (low, width, *params),
        ).fetchall()
    )
    buckets = (high - low) // width + 1
    tallest = max(counts.values())
    step = (WIDTH - 2 * MARGIN) / buckets
    for b in range(buckets):
        count = counts.get(b, 0)
        h = (HEIGHT - 2 * MARGIN) * count / tallest
        start = low + b * width
        chart.bars.append(
            Bar(
                MARGIN + b * step,
                HEIGHT - MARGIN - h,
                max(step - 1, 1),
                h,
                f"{start}–{start + width - 1}: {count}",
            )
        )
    chart.x_labels = (str(low), str(high))
    chart.y_label = f"{tallest:,}"
    return chart


def categories(conn: sqlite3.Connection, title: str, note: str, sql: str, params: tuple = ()) -> Chart:
    """A bar per category of ``sql`` (rows of label, count), in count order."""
    rows = conn.execute(sql, params).fetchall()
    chart = Chart(title, note)
    if not rows:
        chart.empty = True
        return chart
    tallest = max(count for _, count in rows)
    step = (WIDTH - 2 * MARGIN) / len(rows)
    for i, (label, count) in enumerate(rows):
        h = (HEIGHT - 2 * MARGIN) * count / tallest
        name = "none" if label is None else str(label)
        kind = "cut" if label == "length" else "ok"
        chart.bars.append(
            Bar(MARGIN + i * step, HEIGHT - MARGIN - h, step * 0.8, h, f"{name}: {count:,}", kind, name)
        )
    chart.y_label = f"{tallest:,}"
    return chart


def time_buckets(
    conn: sqlite3.Connection, table: str, column: str, sums: str, where: Where = ALL
) -> tuple[float, float, list]:
    """The first and last time in ``table.column`` (rows matching ``where``) and, per one of :data:`BINS` spans
    between, ``sums``."""
    condition, params = where
    start, end = conn.execute(
        f"SELECT min({column}), max({column}) FROM {table} WHERE {condition}", params
    ).fetchone()
    if start is None:
        return 0.0, 0.0, []
    span = max(end - start, 1e-3)
    rows = conn.execute(
        f"SELECT min(CAST(({column} - ?) * ? / ? AS INTEGER), ? - 1) AS b, {sums} FROM {table} "
        f"WHERE {condition} GROUP BY b ORDER BY b",
        (start, BINS, span, BINS, *params),
    ).fetchall()
    return start, end, rows


def requests_over_time(conn: sqlite3.Connection, scope: Scope) -> Chart:
    """Attempts per time bucket, stacked: answered, rate limited (429), other errors."""
    chart = Chart(
        "Requests over time",
        f"every HTTP attempt {scope.of}; 429s in red, other errors in grey; a batch's requests count when the "
        "batch was uploaded",
    )
    sums = "sum(status = 200), sum(status = 429), sum(status IS NULL OR (status != 200 AND status != 429))"
    start, end, rows = time_buckets(conn, ALL_ATTEMPTS, "at", sums, scope.where("at"))
    if not rows:
        chart.empty = True
        return chart
    span = max(end - start, 1e-3)
    tallest = max(ok + limited + other for _, ok, limited, other in rows)
    step = (WIDTH - 2 * MARGIN) / BINS
    scale = (HEIGHT - 2 * MARGIN) / tallest
    for b, ok, limited, other in rows:
        base = HEIGHT - MARGIN
        for count, kind, what in (
            (ok, "ok", "answered"),
            (limited, "limited", "429"),
            (other, "error", "errors"),
        ):
            if count:
                h = count * scale
                base -= h
                at = time.strftime("%H:%M:%S", time.localtime(start + b * span / BINS))
                chart.bars.append(
                    Bar(MARGIN + b * step, base, max(step - 1, 1), h, f"{at}: {count} {what}", kind)
                )
    chart.x_labels = (clock_text(start), clock_text(end))
    chart.y_label = f"{tallest:,} in {_duration(span / BINS)}"
    return chart


def cost_over_time(conn: sqlite3.Connection, price: Price | None, scope: Scope) -> Chart:
    """Cumulative cost (or tokens, when the model's price is unknown) of the answers, by the time they arrived."""
    unknown = "no price known for the model" if scope.run_id else "no single model with a known price"
    what = "US dollars at list price" if price else f"tokens ({unknown})"
    chart = Chart("Cost accumulating", f"every answer {scope.got}, {what}")
    sums = "coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0)"
    start, end, rows = time_buckets(conn, "responses", "created", sums, scope.where("created"))
    if not rows:
        chart.empty = True
        return chart
    total, points = 0.0, []
    for b, prompt, completion in rows:
        total += price.cost(prompt, completion) if price else prompt + completion
        points.append((b + 1, total))
    step = (WIDTH - 2 * MARGIN) / BINS
    scale = (HEIGHT - 2 * MARGIN) / (total or 1)
    chart.line = " ".join(
        f"{MARGIN + x * step:.1f},{HEIGHT - MARGIN - y * scale:.1f}" for x, y in [(0, 0.0), *points]
    )
    chart.x_labels = (clock_text(start), clock_text(end))
    chart.y_label = f"${total:,.4f}" if price else f"{total:,.0f} tokens"
    return chart


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def clock_text(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def run_charts(conn: sqlite3.Connection, run_id: str | None, price: Price | None) -> list[Chart]:
    """The charts of one run (None: of the whole cache)."""
    scope = Scope(run_id, None if run_id is None else run_passes.spans(conn, run_id))
    answers, params = scope.where("created")
    conversations = "SELECT answer_tokens AS v FROM conversations" + (" WHERE run_id = ?" if run_id else "")
    return [
        histogram(
            conn,
            "Tokens per turn",
            f"completion tokens of every answer {scope.got}",
            f"SELECT completion_tokens AS v FROM responses WHERE {answers}",
            params,
        ),
        histogram(
            conn,
            "Tokens per conversation",
            f"completion tokens of each finished conversation {scope.of}",
            conversations,
            (run_id,) if run_id else (),
        ),
        categories(
            conn,
            "Finish reasons",
            f"every answer {scope.got}; 'length' (cut at max_tokens) in orange",
            f"SELECT finish_reason, count(*) AS n FROM responses WHERE {answers} GROUP BY finish_reason "
            "ORDER BY n DESC",
            params,
        ),
        requests_over_time(conn, scope),
        cost_over_time(conn, price, scope),
    ]
