"""Rate limits through the real local teacher: refusals cost no attempt, limits are learned, kept and shown."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess

from support import DISTILL, run_command
from test_engine_run import make_job, write_sharegpt

from distill import learned_limits
from distill.cache import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION, Cache
from distill.runner import run_async


def questions(n: int, start: int = 0) -> list[list[tuple[str, str]]]:
    return [[("human", f"question {i}")] for i in range(start, start + n)]


def learned(cache) -> list[tuple]:
    with sqlite3.connect(cache) as conn:
        return conn.execute("SELECT base_url, model, rpm, source FROM rate_limits").fetchall()


async def test_a_429_storm_fails_no_conversation_even_with_one_attempt(tmp_path, teacher):
    # A run starts at the rate an earlier run learned (6,000/min), but the limit has fallen to 600/min and the
    # server says nothing: its first second is a storm of bare 429s. One attempt per request is allowed.
    teacher.set_knobs(rpm=600, retry_after=False, rate_headers="none")
    data = write_sharegpt(tmp_path / "in.json", questions(40))
    cache = tmp_path / "cache.sqlite"
    async with Cache(cache) as stale:
        learned_limits.save(stale, teacher.base_url, "teacher-70b", 6000.0, "learned")
    report = await run_async(make_job(tmp_path, teacher.base_url, data, attempts=1, concurrency=64))
    assert report.exit_code == 0 and report.export.written == 40
    assert report.stats.rate_limited == teacher.stats.rate_limited >= 5
    assert report.stats.retries == report.stats.rate_limited and report.stats.conversations_failed == 0
    assert learned(cache)[0][2] < 1200  # what it learned replaced the stale rate


async def test_an_unknown_limit_with_bare_429s_is_learned_and_kept_in_the_cache(tmp_path, teacher):
    teacher.set_knobs(rpm=1200, retry_after=False, rate_headers="none")  # 20 a second, nothing said
    data = write_sharegpt(tmp_path / "in.json", questions(60))
    report = await run_async(make_job(tmp_path, teacher.base_url, data, attempts=1, concurrency=32))
    assert report.exit_code == 0 and report.export.written == 60
    assert teacher.stats.rate_limited == report.stats.rate_limited
    ((base_url, model, rpm, source),) = learned(tmp_path / "cache.sqlite")
    assert (base_url, model, source) == (teacher.base_url, "teacher-70b", "learned")
    assert 600 <= rpm <= 1500
    with sqlite3.connect(tmp_path / "cache.sqlite") as conn:
        sent, limited = conn.execute("SELECT sum(sent), sum(limited) FROM rate_windows").fetchone()
    assert sent == teacher.stats.requests and limited == teacher.stats.rate_limited

    # the next run over new conversations starts from what was learned instead of probing again
    await asyncio.sleep(
        1.05
    )  # a server window, so that what the first run spent of it is not charged to this one
    teacher.stats.reset()
    more = write_sharegpt(tmp_path / "more.json", questions(40, start=60))
    again = await run_async(make_job(tmp_path, teacher.base_url, more, output_name="more.jsonl"))
    assert again.exit_code == 0 and again.stats.rate_source in ("stored", "learned")
    assert teacher.stats.rate_limited <= 4, (rpm, teacher.stats.rate_limited)


async def test_a_limit_shed_as_503_costs_no_attempt(tmp_path, teacher):
    teacher.set_knobs(rpm=1200, limit_status=503, retry_after=False, rate_headers="none")
    data = write_sharegpt(tmp_path / "in.json", questions(60))
    # the first 503s of a burst, before their share says "shedding", count as faults: a few attempts are needed
    report = await run_async(make_job(tmp_path, teacher.base_url, data, attempts=3, concurrency=32))
    assert report.exit_code == 0 and report.export.written == 60
    assert report.stats.shed > 0 and report.stats.rate_source == "learned"


async def test_max_wait_ends_a_request_that_is_refused_forever(tmp_path, teacher):
    teacher.set_knobs(throttle_rate=1.0, throttle_retry_after=0.05)
    data = write_sharegpt(tmp_path / "in.json", questions(2))
    report = await run_async(make_job(tmp_path, teacher.base_url, data, max_wait=0.3))
    assert report.exit_code == 1 and report.stats.conversations_failed == 2
    assert "--max-wait 0.3" in report.stats.failures[0][2]
    teacher.set_knobs(throttle_rate=0.0)  # refused for its rate, not for good: the next run sends it again
    again = await run_async(make_job(tmp_path, teacher.base_url, data))
    assert again.exit_code == 0 and again.export.written == 2


async def test_a_limit_told_in_each_dialect_is_obeyed_from_the_first_answer(tmp_path, teacher):
    for dialect in ("openai", "anthropic"):
        teacher.set_knobs(rpm=1200, rate_headers=dialect)
        teacher.stats.reset()
        data = write_sharegpt(tmp_path / f"{dialect}.json", questions(30))
        report = await run_async(
            make_job(
                tmp_path,
                teacher.base_url,
                data,
                cache=tmp_path / f"{dialect}.sqlite",
                output_name=f"{dialect}.jsonl",
                concurrency=32,
            )  # fmt: skip
        )
        assert report.exit_code == 0 and report.stats.rate_source == "told"
        assert teacher.stats.rate_limited <= 1
        assert learned(tmp_path / f"{dialect}.sqlite")[0][2:] == (1200.0, "told")


async def test_a_cache_from_before_migration_4_gains_the_rate_tables(tmp_path, teacher):
    cache = tmp_path / "cache.sqlite"
    with sqlite3.connect(cache) as conn:  # a cache as schema 3 left it
        for migration in MIGRATIONS[:3]:
            conn.executescript(migration)
        conn.execute("PRAGMA user_version = 3")
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.close()
    assert "rate_limits" in MIGRATIONS[3]
    teacher.set_knobs(rpm=600)  # told in the headers: something to remember
    data = write_sharegpt(tmp_path / "in.json", questions(25))
    report = await run_async(make_job(tmp_path, teacher.base_url, data))
    assert report.exit_code == 0 and report.export.written == 25
    with sqlite3.connect(cache) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert learned(cache) == [(teacher.base_url, "teacher-70b", 600.0, "told")]


def test_run_shows_the_rate_and_stats_shows_the_learned_limits(tmp_path):
    from distill.servers.teacher import TeacherKnobs, start_teacher_process

    data = tmp_path / "in.json"
    write_sharegpt(data, questions(80))
    cache, output = tmp_path / "c.sqlite", tmp_path / "o.jsonl"
    knobs = TeacherKnobs(rpm=1200, retry_after=False, rate_headers="none", token_counter="words")
    with start_teacher_process(knobs) as server:
        command = run_command(server, data, cache, output, "--concurrency", "32", "--attempts", "1")
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    assert "\nrate     " in done.stderr and "requests/min (learned)" in done.stderr
    assert "answered 429" in done.stderr and "on average for its slot" in done.stderr
    manifest = json.loads((tmp_path / "o.jsonl.manifest.json").read_text())["this_run"]
    assert manifest["rate_source"] == "learned" and manifest["learned_rpm"] > 0

    shown = subprocess.run([*DISTILL, "stats", "--cache", str(cache)], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "1 learned rate limits:" in shown.stdout
    assert f"teacher at {server.base_url}: " in shown.stdout and "requests/min (learned)" in shown.stdout
    as_json = subprocess.run(
        [*DISTILL, "stats", "--cache", str(cache), "--json"], capture_output=True, text=True
    )
    (limit,) = json.loads(as_json.stdout)["learned_limits"]
    assert limit["model"] == "teacher" and 600 <= limit["rpm"] <= 1500 and limit["windows"] >= 1
