"""The cache's own contract: what is queued is readable at once, committed by the writer process, and bounded."""

from __future__ import annotations

import asyncio
import sqlite3

from distill.cache import BACKLOG_BATCHES, Cache
from distill.requests import TeacherResponse


def answer(n: int) -> TeacherResponse:
    return TeacherResponse(f"answer {n}", "stop", 1, 1)


async def test_room_waits_until_the_backlog_is_committed(tmp_path):
    async with Cache(tmp_path / "c.sqlite", max_batch=10, commit_interval=60) as cache:
        for n in range(10):
            cache.put(f"k{n}", b"{}", answer(n))
        await asyncio.sleep(0)  # the first commit goes to the writer process
        for n in range(10, 1010):  # queued behind it: nothing else would commit them for a minute
            cache.put(f"k{n}", b"{}", answer(n))
        assert (await cache.get("k1009")).text == "answer 1009"  # readable before it is committed
        assert cache._queued() > BACKLOG_BATCHES * 10 and cache.full()
        await cache.room()
        assert cache._queued() <= BACKLOG_BATCHES * 10 and not cache.full()
        assert cache.commits >= 1
    with sqlite3.connect(tmp_path / "c.sqlite") as conn:
        assert conn.execute("SELECT count(*) FROM responses").fetchone()[0] == 1010


def test_a_finished_mark_carries_the_answers_tokens():
    from distill.cache_view import finished_row

    one, other = TeacherResponse("a", "stop", 7, 3), TeacherResponse("b", "stop", 5, 9)
    unknown = TeacherResponse("c", "stop")  # a server that reported no usage
    assert finished_row("r", 4, [one]) == (7, 3, 3, "r", 4)
    assert finished_row("r", 4, [unknown]) == (None, None, None, "r", 4)
    assert finished_row("r", 4, [one, other, unknown]) == (12, 12, 9, "r", 4)
    assert finished_row("r", 4, []) == (None, None, None, "r", 4)
