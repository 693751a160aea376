"""The cache's writer process: commits in order, reports SQLite errors as they were, survives its parent."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import threading
from pathlib import Path

import pytest

from distill.cache import Cache
from distill.cache_file import connect_for_writing, reported
from distill.cache_view import ViewRows, index_for_search
from distill.cache_writer import LENGTH, WRITER_NICE, CommitGroup, WriterProcess, decode, encode, serve
from distill.errors import CacheError


def group(*keys: str, text: str | None = "answer") -> CommitGroup:
    rows = [(key, b"{}", text, "stop", 1, 2, 10.0, 9.0, 1.0) for key in keys]
    return CommitGroup(rows, [], [], [], [], [], ViewRows(), False)


def message(*parts) -> bytes:
    payload = encode(parts)
    return LENGTH.pack(len(payload)) + payload


async def empty_cache(path) -> None:
    async with Cache(path):
        pass


def keys_in(path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [key for (key,) in db.execute("SELECT key FROM responses ORDER BY key")]


async def test_groups_are_committed_in_order_and_the_writer_ends_with_the_cache(tmp_path):
    path = tmp_path / "c.sqlite"
    await empty_cache(path)
    writer = await WriterProcess.start(path)
    await writer.commit(group("a", "b"))
    assert keys_in(path) == ["a", "b"]  # committed when commit returns, readable by another connection
    await writer.commit(group("b", "c"))  # a later row replaces an earlier one
    await writer.close()
    assert keys_in(path) == ["a", "b", "c"]
    assert writer._process.returncode == 0


async def test_an_sqlite_error_of_the_writer_is_raised_in_the_run_as_the_same_class(tmp_path):
    path = tmp_path / "c.sqlite"
    await empty_cache(path)
    writer = await WriterProcess.start(path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="NOT NULL"):
            await writer.commit(group("a", text=None))
        with pytest.raises(CacheError, match="failed: NOT NULL"), reported(path):
            await writer.commit(group("b", text=None))
        await writer.commit(group("c"))  # the failed transactions were rolled back; the writer goes on
    finally:
        await writer.close()
    assert keys_in(path) == ["c"]


async def test_a_writer_that_died_is_a_cache_error_that_says_so(tmp_path):
    path = tmp_path / "c.sqlite"
    await empty_cache(path)
    writer = await WriterProcess.start(path)
    await writer.commit(group("a"))
    os.kill(writer._process.pid, signal.SIGKILL)
    with pytest.raises(CacheError, match=r"writer process of the cache .* ended \(exit status -9\)"):
        await writer.commit(group("b"))
    await writer.close()
    assert keys_in(path) == ["a"]


async def test_when_the_run_is_gone_the_writer_commits_every_whole_group_it_received(tmp_path):
    path = tmp_path / "c.sqlite"
    await empty_cache(path)
    whole = message("commit", group("a")) + message("commit", group("b"))
    cut = message("commit", group("c"))[:-5]  # the run was killed while sending it
    answers = io.BytesIO()
    serve(str(path), 10_000, io.BytesIO(whole + cut), answers)
    assert keys_in(path) == ["a", "b"]
    answers.seek(0)
    for _ in range(2):  # one answer per commit: None, committed
        (size,) = LENGTH.unpack(answers.read(LENGTH.size))
        assert decode(answers.read(size)) == ("reply", None)
    assert answers.read() == b""


class Label(str):
    """A str subclass: marshal refuses it."""


def test_a_group_travels_as_marshal_and_anything_else_as_pickle():
    rows = [("k", b"{}", "answer", None, 1, None, 10.5, 9.0, 0.25)]
    viewed = ViewRows(
        attempts=[("k", 9.0, 503, "ServerError", 0.5, None)], rejects=[("r", "f:1", "bad", None)]
    )
    sent = CommitGroup(rows, [("f", "why", 404, 1.0)], [], [], [], [("r", 0.5, 1, 2, 3, 4.0)], viewed, True)
    payload = encode(("commit", sent))
    assert payload[:1] == b"m"
    assert decode(payload) == ("commit", sent)
    odd = CommitGroup(
        [(Label("k"), b"{}", "a", "stop", 1, 2, 1.0, 1.0, 1.0)], [], [], [], [], [], ViewRows(), False
    )
    payload = encode(("commit", odd))
    assert payload[:1] == b"p"
    assert decode(payload) == ("commit", odd)
    assert decode(encode(("reply", ("IntegrityError", "NOT NULL")))) == (
        "reply",
        ("IntegrityError", "NOT NULL"),
    )


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="Unix priorities")
async def test_the_writer_runs_at_a_third_of_the_runs_weight_in_a_session_of_its_own(tmp_path):
    path = tmp_path / "c.sqlite"
    await empty_cache(path)
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    writer = await WriterProcess.start(path)
    try:
        await writer.commit(group("a"))  # running: its weight was set before the first commit
        pid = writer._process.pid
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(ours + WRITER_NICE, 19)
        assert os.getsid(pid) == pid != os.getsid(0)  # a Ctrl-C at the terminal is the run's alone
        if hasattr(
            os, "SCHED_IDLE"
        ):  # never SCHED_IDLE: it starves beside busy processes of the run's session
            assert os.sched_getscheduler(pid) == os.SCHED_OTHER
        group_file = Path(f"/proc/{pid}/autogroup")
        if group_file.exists():  # Linux weighs sessions, not processes, when autogroups are on
            assert group_file.read_text().split()[-1] == str(WRITER_NICE)
            assert Path("/proc/self/autogroup").read_text() != group_file.read_text()
    finally:
        await writer.close()
    assert os.getpriority(os.PRIO_PROCESS, 0) == ours  # the run keeps its own


async def test_an_indexing_pass_waits_for_another_connection_that_is_writing(tmp_path):
    # the run's own connection writes too (rate windows, learned limits): a pass that read first and then asked
    # for the write lock was refused at once ("database is locked") instead of waiting for it
    path = tmp_path / "c.sqlite"
    async with Cache(path) as cache:
        await cache.record_run("run", "/in.jsonl", {"model": "m"})
        cache.add_conversations("run", [(0, "c0", "in.jsonl:1", b'{"messages":[],"meta":{}}')])
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM conversation_search")
        db.execute("DELETE FROM search_progress")
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    releasing = threading.Timer(0.3, other.execute, ("COMMIT",))
    releasing.start()
    writer_db = connect_for_writing(path)
    try:
        assert index_for_search(writer_db) == 1
    finally:
        releasing.join()
        writer_db.close()
        other.close()
