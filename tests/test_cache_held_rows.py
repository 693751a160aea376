"""A conversation's row waits in memory for its finished or failed mark and is written once, complete (issue 12)."""

from __future__ import annotations

import asyncio
import sqlite3

from distill import cache_commits, cache_writer
from distill.cache import Cache
from distill.requests import TeacherResponse

ROW_COLUMNS = "position, finished, failed_key, prompt_tokens, answer_tokens, longest_answer"


def rows(path) -> list[tuple]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(f"SELECT {ROW_COLUMNS} FROM conversations ORDER BY position").fetchall()
    finally:
        conn.close()


async def written(path, count: int) -> list[tuple]:
    """The rows once ``count`` are there (timer commits, however loaded the machine), or what is after 5 s."""
    for _ in range(500):
        if len(found := rows(path)) >= count:
            return found
        await asyncio.sleep(0.01)
    return rows(path)


class Statements:
    """Counts the conversation rows each kind of statement of the group commits wrote."""

    def __init__(self, monkeypatch) -> None:
        self.inserted = self.complete = self.updated = 0
        commit = cache_writer.WriterProcess.commit

        async def counted(writer, group: cache_writer.CommitGroup) -> None:
            self.inserted += len(group.conversations)
            self.complete += len(group.complete)
            self.updated += len(group.finished) + len(group.viewed.failed)
            await commit(writer, group)

        monkeypatch.setattr(cache_writer.WriterProcess, "commit", counted)


def conversation(position: int) -> tuple[int, str, str, bytes]:
    return (position, f"c{position}", f"in.jsonl:{position + 1}", b'{"messages": []}')


async def test_marked_rows_are_written_once_with_their_marks(tmp_path, monkeypatch):
    statements = Statements(monkeypatch)
    path = tmp_path / "cache.sqlite"
    async with Cache(path) as cache:
        await cache.record_run("run", "/in.jsonl", {"model": "m"})
        cache.add_conversations("run", [conversation(0), conversation(1), conversation(2)])
        cache.mark_finished(
            "run", 0, [TeacherResponse("a", "stop", 3, 5), TeacherResponse("b", "stop", 4, 7)]
        )
        cache.mark_failed("run", 1, "failed-key")
        # timer commits write the marked rows; the unmarked one is held still
        assert await written(path, 2) == [(0, 1, None, 7, 12, 7), (1, 0, "failed-key", None, None, None)]
    assert rows(path)[2:] == [(2, 0, None, None, None, None)]  # closing the cache wrote it
    assert (statements.inserted, statements.complete, statements.updated) == (1, 2, 0)


async def test_an_unmarked_row_is_written_once_held_long_enough(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_commits, "CONVERSATION_HOLD", 0.05)
    path = tmp_path / "cache.sqlite"
    async with Cache(path, commit_interval=0.01) as cache:
        await cache.record_run("run", "/in.jsonl", {"model": "m"})
        cache.add_conversations("run", [conversation(0)])
        # a viewer reading during a run sees it without any other write
        assert await written(path, 1) == [(0, 0, None, None, None, None)]
        cache.mark_finished("run", 0, [TeacherResponse("a", "stop", 1, 2)])  # written already: an UPDATE
    assert rows(path) == [(0, 1, None, 1, 2, 2)]


async def test_a_mark_queued_before_its_row_still_applies(tmp_path, monkeypatch):
    statements = Statements(monkeypatch)
    path = tmp_path / "cache.sqlite"
    async with Cache(path) as cache:  # as bench/resume.py writes: the marks first, the rows in chunks after
        await cache.record_run("run", "/in.jsonl", {"model": "m"})
        cache.mark_finished("run", 0)
        cache.mark_failed("run", 1, "k")
        cache.add_conversations("run", [conversation(0), conversation(1)])
        assert await written(path, 2) == [(0, 1, None, None, None, None), (1, 0, "k", None, None, None)]
    assert (statements.inserted, statements.complete, statements.updated) == (2, 0, 2)
