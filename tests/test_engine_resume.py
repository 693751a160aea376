"""Reruns over a cache: finished conversations are skipped without planning, changed ones are answered again."""

from __future__ import annotations

import sqlite3

from distill import plan
from distill.cache import APPLICATION_ID, MIGRATIONS
from distill.runner import run_async
from tests.test_engine_run import make_job, read_lines, write_sharegpt

THREE = [
    [("human", "first question"), ("gpt", "x"), ("human", "first follow-up")],
    [("human", "second question")],
    [("human", "third question"), ("gpt", "y"), ("human", "third follow-up")],
]


def finished_marks(cache) -> list[tuple[int, str, int]]:
    with sqlite3.connect(cache) as conn:
        return conn.execute("SELECT position, id, finished FROM conversations ORDER BY position").fetchall()


SCHEMA_2_COLUMNS = {
    "responses": "key, request, text, finish_reason, prompt_tokens, completion_tokens, created",
    "runs": "id, input, settings, created, updated",
    "conversations": "run_id, position, id, source, data",
}


def rewrite_as_schema_2(cache) -> None:
    """Rewrite ``cache`` as schema 2 (before the finished marks) would hold the same rows."""
    with sqlite3.connect(cache) as conn:
        rows = {t: conn.execute(f"SELECT {c} FROM {t}").fetchall() for t, c in SCHEMA_2_COLUMNS.items()}
    conn.close()
    for path in (cache, cache.with_name(cache.name + "-wal"), cache.with_name(cache.name + "-shm")):
        path.unlink(missing_ok=True)
    with sqlite3.connect(cache) as conn:
        for migration in MIGRATIONS[:2]:
            conn.executescript(migration)
        for table, columns in SCHEMA_2_COLUMNS.items():
            marks = ", ".join("?" * len(columns.split(",")))
            conn.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", rows[table])
        conn.execute("PRAGMA user_version = 2")
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.close()


class PlanCounter:
    """Counts the requests planned (``plan.request_for`` calls), by the engine and the export alike."""

    def __init__(self, monkeypatch) -> None:
        self.calls = 0
        original = plan.request_for

        def counted(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(plan, "request_for", counted)


async def test_a_rerun_plans_no_request_for_a_finished_conversation(tmp_path, teacher, monkeypatch):
    data = write_sharegpt(tmp_path / "in.json", THREE)
    first = await run_async(make_job(tmp_path, teacher.base_url, data))
    assert first.exit_code == 0
    assert [m[2] for m in finished_marks(tmp_path / "cache.sqlite")] == [1, 1, 1]
    counter = PlanCounter(monkeypatch)
    second = await run_async(make_job(tmp_path, teacher.base_url, data))
    assert second.stats.requests_sent == 0
    assert second.stats.cache_hits == second.stats.turns_done == 5
    assert second.stats.conversations_done == 3
    assert counter.calls == 5  # the export's look-up of each turn's answer; the engine planned nothing
    assert second.export.path.read_bytes() == first.export.path.read_bytes()


async def test_a_conversation_changed_in_place_is_answered_again(tmp_path, teacher):
    data = write_sharegpt(tmp_path / "in.json", THREE)
    await run_async(make_job(tmp_path, teacher.base_url, data))
    sent = teacher.stats.requests
    changed = [THREE[0], [("human", "a different second question")], THREE[2]]
    write_sharegpt(data, changed)
    again = await run_async(make_job(tmp_path, teacher.base_url, data))
    assert teacher.stats.requests == sent + 1
    assert again.stats.conversations_done == 3
    lines = read_lines(again.export.path)
    assert [line["messages"][0]["content"] for line in lines] == [
        "first question",
        "a different second question",
        "third question",
    ]
    assert [m[2] for m in finished_marks(tmp_path / "cache.sqlite")] == [1, 1, 1]


async def test_an_input_that_shrank_leaves_no_rows_past_its_end(tmp_path, teacher):
    data = write_sharegpt(tmp_path / "in.json", THREE)
    await run_async(make_job(tmp_path, teacher.base_url, data))
    write_sharegpt(data, THREE[:2])
    again = await run_async(make_job(tmp_path, teacher.base_url, data))
    assert again.export.written == 2
    assert [m[1] for m in finished_marks(tmp_path / "cache.sqlite")] == ["c0", "c1"]


async def test_a_failed_conversation_is_not_marked_and_the_next_run_answers_it(tmp_path, teacher):
    data = write_sharegpt(tmp_path / "in.json", [[("human", "fine")]])
    await run_async(make_job(tmp_path, teacher.base_url, data))
    write_sharegpt(data, [[("human", "fine")], [("human", "during the outage")]])
    teacher.set_knobs(error_rate=1.0)
    outage = await run_async(make_job(tmp_path, teacher.base_url, data, attempts=1))
    assert outage.exit_code == 1 and outage.stats.conversations_done == 1
    assert [m[2] for m in finished_marks(tmp_path / "cache.sqlite")] == [1, 0]
    teacher.set_knobs(error_rate=0.0)
    recovered = await run_async(make_job(tmp_path, teacher.base_url, data, attempts=1))
    assert recovered.exit_code == 0 and recovered.export.written == 2
    assert recovered.stats.requests_sent == 1
    assert [m[2] for m in finished_marks(tmp_path / "cache.sqlite")] == [1, 1]


async def test_a_cache_from_before_the_marks_is_migrated_and_marked_by_its_first_rerun(tmp_path, teacher):
    data = write_sharegpt(tmp_path / "in.json", THREE)
    first = await run_async(make_job(tmp_path, teacher.base_url, data))
    cache = tmp_path / "cache.sqlite"
    rewrite_as_schema_2(cache)
    assert "finished" in MIGRATIONS[2]
    sent = teacher.stats.requests
    again = await run_async(make_job(tmp_path, teacher.base_url, data))
    assert teacher.stats.requests == sent
    assert again.stats.cache_hits == 5
    assert again.export.path.read_bytes() == first.export.path.read_bytes()
    assert [m[2] for m in finished_marks(cache)] == [1, 1, 1]
