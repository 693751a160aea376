"""Each run's charts and learned limits on its own page: the passes of a run in time (cache migration 7), the
charts drawn over them, the whole cache's charts, and a cache from before the migration."""

from __future__ import annotations

import asyncio
import math
import sqlite3

from distill import run_passes
from distill.cache import Cache
from distill.cache_file import MIGRATIONS
from distill.view import charts, limits, store

SETTINGS = {"model": "teacher", "api": "chat", "history": "teacher", "sampling": {}, "system_prompt": None}
PASSES = [
    ("a", 100.0, 200.0),
    ("b", 200.5, 300.0),
    ("a", 400.0, None),
    ("b", 500.0, 600.0),
]  # a killed at 400+


async def make_cache(path) -> None:
    async with Cache(path) as cache:
        for run_id in ("a", "b"):
            await cache.record_run(run_id, f"/{run_id}.jsonl", SETTINGS)


def fill(path) -> None:
    """Two runs' passes, attempts, answers and rate windows at known times."""
    asyncio.run(make_cache(path))
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM run_passes")
        conn.executemany("INSERT INTO run_passes VALUES (?, ?, ?)", PASSES)
        attempts = [(f"k{at}", at, status, None, 0.1, None) for at, status in (
            (150, 200), (160, 429), (170, 200),  # a's first pass
            (250, 200), (260, 200),  # b's first
            (450, 200), (455, 429), (460, 500),  # a's second, which never ended: until b started again
            (550, 200),  # b's second
        )]  # fmt: skip
        conn.executemany("INSERT INTO attempts VALUES (?, ?, ?, ?, ?, ?)", attempts)
        answers = [
            (f"r{at}", b"{}", "answer", reason, 10, tokens, at)
            for at, reason, tokens in (
                (150, "stop", 5),
                (450, "length", 7),
                (250, "stop", 100),
                (550, "stop", 90),
            )
        ]
        conn.executemany(
            "INSERT INTO responses (key, request, text, finish_reason, prompt_tokens, completion_tokens, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            answers,
        )
        windows = [
            ("a", "http://t/v1", "teacher", 160.0, 1.0, 10, 9, 1, 0, 0, 600.0),
            ("a", "http://t/v1", "teacher", 455.0, 1.0, 10, 8, 2, 0, 0, 450.0),
            ("b", "http://t/v1", "teacher", 250.0, 1.0, 30, 30, 0, 0, 0, 1200.0),
        ]
        conn.executemany(
            "INSERT INTO rate_windows (run_id, base_url, model, at, seconds, sent, accepted, limited, shed, faults, "
            "rpm) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            windows,
        )
        conn.execute("INSERT INTO rate_limits VALUES ('http://t/v1', 'teacher', 450.0, 'learned', 460.0)")


def counted(chart: charts.Chart) -> int:
    """The sum of a chart's bars, read from their tooltips (``...: N what``)."""
    return sum(int(bar.title.rsplit(": ", 1)[1].split()[0].replace(",", "")) for bar in chart.bars)


def test_a_run_is_the_passes_it_ran_in(tmp_path):
    path = tmp_path / "cache.sqlite"
    fill(path)
    conn = store.open_cache(path)
    assert run_passes.spans(conn, "a") == [(100.0, 200.0), (400.0, 500.0)]  # killed: up to the next pass
    assert run_passes.spans(conn, "b") == [(200.5, 300.0), (500.0, 600.0)]
    assert run_passes.spans(conn, "nope") == []
    conn.close()
    with sqlite3.connect(path) as writer:  # a run merged in from a cache that kept no pass
        writer.execute("DELETE FROM run_passes WHERE run_id = 'b'")
        writer.execute("UPDATE runs SET created = 10, ended = 20 WHERE id = 'b'")
    conn = store.open_cache(path)
    assert run_passes.spans(conn, "b") == [(10.0, 20.0)]
    conn.close()


def test_a_runs_charts_count_only_its_own_requests_and_answers(tmp_path):
    path = tmp_path / "cache.sqlite"
    fill(path)
    conn = store.open_cache(path)
    per_run = {run_id: charts.run_charts(conn, run_id, None) for run_id in ("a", "b", None)}
    conn.close()
    requests = {run_id: figures[3] for run_id, figures in per_run.items()}
    assert {run_id: counted(chart) for run_id, chart in requests.items()} == {"a": 6, "b": 3, None: 9}
    assert sum(bar.kind == "limited" for bar in requests["a"].bars) == 2
    assert not any(bar.kind == "limited" for bar in requests["b"].bars)
    reasons = {
        run_id: {bar.label: bar.title for bar in figures[2].bars} for run_id, figures in per_run.items()
    }
    assert reasons["a"] == {"stop": "stop: 1", "length": "length: 1"} and reasons["b"] == {"stop": "stop: 2"}
    assert reasons[None] == {"stop": "stop: 3", "length": "length: 1"}
    assert per_run["a"][4].y_label == "32 tokens" and per_run["b"][4].y_label == "210 tokens"
    assert "this run" in per_run["a"][0].note and "whole cache" in per_run[None][0].note


def test_a_runs_learned_limits_are_its_windows_and_its_models_rate(tmp_path):
    path = tmp_path / "cache.sqlite"
    fill(path)
    conn = store.open_cache(path)
    a, b = limits.run_limits(conn, "a", "teacher"), limits.run_limits(conn, "b", "teacher")
    other = limits.run_limits(conn, "a", "another-model")
    conn.close()
    assert (a.windows, a.sent, a.accepted, a.limited, a.last_rpm) == (2, 20, 17, 3, 450.0)
    assert (b.windows, b.sent, b.limited, b.last_rpm) == (1, 30, 0, 1200.0)
    assert [bar.kind for bar in a.chart.bars] == ["limited", "limited"] and a.chart.line
    assert b.chart.bars == [] and not b.chart.empty
    assert [row["rpm"] for row in a.kept] == [450.0] and other.kept == [] and not a.batched


def test_a_cache_from_before_migration_9_knows_each_runs_last_pass(tmp_path):
    path = tmp_path / "old.sqlite"
    asyncio.run(make_cache(path))
    with sqlite3.connect(path) as conn:  # back to the schema before run_passes: what the migration finds
        conn.execute("DROP VIEW attempt_log")  # the later migration's (answered attempts' timing, issue 12)
        conn.execute("ALTER TABLE responses DROP COLUMN sent_at")
        conn.execute("ALTER TABLE responses DROP COLUMN latency")
        conn.execute("DROP TABLE run_passes")
        conn.execute("ALTER TABLE attempts DROP COLUMN batch_id")
        conn.execute("UPDATE runs SET updated = 50, ended = 60 WHERE id = 'a'")
        conn.execute(f"PRAGMA user_version = {MIGRATIONS.index(run_passes.MIGRATION)}")
    asyncio.run(make_cache(path))  # the next run migrates it, and starts a pass of its own
    conn = store.open_cache(path)
    assert run_passes.spans(conn, "a")[0] == (50.0, 60.0)
    assert run_passes.spans(conn, "b")[-1][1] == math.inf  # still open: make_cache never ended it
    conn.close()


def test_a_cache_without_runs_still_has_its_charts_and_says_why_it_lists_none(tmp_path):
    path = tmp_path / "eval.sqlite"
    fill(path)
    with sqlite3.connect(path) as conn:  # an evaluation's cache: answers and attempts, no run
        conn.execute("DELETE FROM runs")
    home, charts_page = asyncio.run(pages(path, "", "charts"))
    assert 'id="no-runs"' in home and "distill eval" in home and "No rate learned yet" not in home
    assert "http://t/v1" in home and "450.0" in home  # the learned limit, for the whole cache
    assert "the whole cache" in charts_page and charts_page.count("<figure>") == 5


async def pages(path, *addresses: str) -> list[str]:
    """The pages at ``addresses`` of a viewer started over ``path`` as ``distill view`` starts it."""
    import aiohttp

    from distill.view import server

    runner, url = await server.start(path, "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            found = []
            for address in addresses:
                async with session.get(url + address) as response:
                    assert response.status == 200, address
                    found.append(await response.text())
            return found
    finally:
        await runner.cleanup()


def test_a_run_whose_last_pass_has_no_end_is_shown_as_running_or_killed(tmp_path):
    path = tmp_path / "cache.sqlite"
    fill(path)
    conn = store.open_cache(path)
    found = {run.id: (run.passes, run.running) for run in store.runs(conn)}
    conn.close()
    assert found == {"a": (2, True), "b": (2, False)}
    [home] = asyncio.run(pages(path, ""))
    assert home.count("not yet: running now, or its process was stopped without ending") == 1
