"""The viewer's queries over a cache filled as a run fills it: paging, filters, search, counts, live reads."""

from __future__ import annotations

import io
import json
import sqlite3

import pytest

from bench.view_list import RARE_WORD, fill
from distill.cache import Cache
from distill.conversation import Conversation, Message
from distill.errors import CacheError
from distill.shard import Shard
from distill.split import split_of
from distill.stored import encode_conversation
from distill.view import details, server, store

COUNT = 1200  # failed: positions 7, 507, 1007; the rare word at 800


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    import asyncio

    path = tmp_path_factory.mktemp("viewstore") / "cache.sqlite"
    run_id = asyncio.run(fill(path, COUNT))
    return path, run_id


def page(filled, **wanted) -> store.ListPage:
    path, run_id = filled
    conn = store.open_cache(path)
    try:
        return store.conversation_page(conn, run_id, store.ListQuery(**wanted))
    finally:
        conn.close()


def positions(result: store.ListPage) -> list[int]:
    return [row.position for row in result.rows]


def test_pages_follow_each_other_by_position(filled):
    first = page(filled)
    assert positions(first) == list(range(50)) and first.more and first.next_after == 49
    assert positions(page(filled, after=49)) == list(range(50, 100))
    last = page(filled, after=COUNT - 11)
    assert positions(last) == list(range(COUNT - 10, COUNT)) and not last.more and last.next_after is None
    row = first.rows[1]
    assert row.id == "conv-1" and row.source == "input.jsonl:2" and row.turns == 2 and row.finished
    assert row.excerpt.startswith("Question 1:") and row.excerpt.endswith("…")


def test_filters_failed_tokens_shard_and_split(filled):
    failed = page(filled, failed=True)
    assert positions(failed) == [7, 507, 1007]
    assert all(r.failure and r.failure_status == 422 and not r.finished for r in failed.rows)
    assert positions(page(filled, min_tokens=740)) == list(range(691, 700))
    shard = Shard(3, 8)
    expected = [n for n in range(COUNT) if shard.owns(f"conv-{n}")]
    assert positions(page(filled, shard=shard)) == expected[:50]
    assert positions(page(filled, shard=shard, after=expected[49])) == expected[50:100]
    validation = [n for n in range(COUNT) if split_of(f"conv-{n}", 0.05) == "validation"]
    assert positions(page(filled, split="validation")) == validation[:50]
    assert positions(page(filled, failed=True, shard=Shard(1, 1))) == [7, 507, 1007]


def test_search_walks_the_index_in_input_order(filled):
    assert positions(page(filled, text=RARE_WORD)) == [COUNT * 2 // 3]
    assert positions(page(filled, text=RARE_WORD.upper())) == [COUNT * 2 // 3]
    every = page(filled, text="river salt")
    assert positions(every) == list(range(50)) and every.more
    assert positions(page(filled, text="river salt", after=1100)) == list(range(1101, 1151))
    assert positions(page(filled, text="conv-1007", failed=True)) == [1007]  # ids are searchable
    for hostile in ('"', "NEAR(a b)", "a OR", "*", "'); DROP TABLE runs; --", "col:umn"):
        page(filled, text=hostile)  # the user's words are phrases, never FTS5 syntax


def test_runs_counts_and_cost(filled):
    path, run_id = filled
    conn = store.open_cache(path)
    [run] = store.runs(conn)
    conn.close()
    assert (run.id, run.conversations, run.finished, run.failed) == (run_id, COUNT, COUNT - 3, 3)
    assert run.prompt_tokens == 40 * (COUNT - 3) and run.ended is not None
    assert run.cost is None  # the bench model has no list price


async def test_the_viewer_reads_while_a_run_writes(tmp_path):
    path = tmp_path / "live.sqlite"
    async with Cache(path) as cache:  # holds the run lock, as a run does
        await cache.record_run("run", "/in.jsonl", {"model": "m", "api": "chat", "history": "teacher",
                                                    "sampling": {}, "system_prompt": None})  # fmt: skip
        conversation = Conversation("live-1", [Message("user", "<b>bold</b> question")], "in.jsonl:1")
        cache.add_conversations(
            "run", [(0, conversation.id, conversation.source, encode_conversation(conversation))]
        )
        await cache.flush()
        conn = store.open_cache(path)
        result = store.conversation_page(conn, "run", store.ListQuery())
        assert [r.id for r in result.rows] == ["live-1"] and result.rows[0].excerpt == "<b>bold</b> question"
        searched = store.conversation_page(conn, "run", store.ListQuery(text="bold"))
        assert (
            searched.rows == [] and searched.unindexed == 1
        )  # indexed in bulk: 10,000 at a time, and at the end
        with pytest.raises(sqlite3.OperationalError):
            conn.execute("DELETE FROM runs")  # read-only
        conn.close()
    conn = store.open_cache(path)
    searched = store.conversation_page(conn, "run", store.ListQuery(text="bold"))
    assert [r.id for r in searched.rows] == ["live-1"] and searched.unindexed == 0
    conn.close()


def test_a_rewritten_conversation_is_searched_by_its_new_text(tmp_path):
    import asyncio

    async def write(text: str) -> None:
        async with Cache(path) as cache:
            await cache.record_run("run", "/in.jsonl", {"model": "m"})
            conversation = Conversation("c", [Message("user", text)], "in.jsonl:1")
            cache.add_conversations("run", [(0, "c", "in.jsonl:1", encode_conversation(conversation))])

    path = tmp_path / "rewrite.sqlite"
    asyncio.run(write("the old wording"))
    asyncio.run(write("a new wording"))  # INSERT OR REPLACE: the index follows
    conn = store.open_cache(path)
    found = {
        w: positions(store.conversation_page(conn, "run", store.ListQuery(text=w))) for w in ("old", "new")
    }
    assert found == {"old": [], "new": [0]}
    assert conn.execute("SELECT count(*) FROM conversation_search").fetchone()[0] == 1
    conn.close()


def test_only_a_loopback_host_goes_unwarned(tmp_path):
    assert server.host_warning("127.0.0.1") is None and server.host_warning("::1") is None
    assert server.host_warning("localhost") is None
    warning = server.host_warning("0.0.0.0")
    assert "0.0.0.0" in warning and "--host 127.0.0.1" in warning
    with pytest.raises(CacheError, match="does not exist"):
        server.serve(tmp_path / "missing.sqlite", browser=False, stream=io.StringIO())


async def test_a_run_records_what_the_viewer_shows(tmp_path, teacher):
    from distill.runner import run_async
    from tests.test_engine_run import make_job

    data = tmp_path / "in.jsonl"
    records = [
        {"id": "ok", "messages": [{"role": "user", "content": "one"}, {"role": "assistant", "content": "x"},
                                  {"role": "user", "content": "two"}]},
        {"id": "no", "messages": [{"role": "user", "content": "please REFUSE"}]},
        {"id": "empty", "messages": []},
    ]  # fmt: skip
    data.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    teacher.set_knobs(permanent_marker="REFUSE", permanent_status=400, fail_first_attempts=1)
    report = await run_async(make_job(tmp_path, teacher.base_url, data, attempts=3))
    assert report.exit_code == 1
    conn = store.open_cache(tmp_path / "cache.sqlite")
    statuses = sorted(s for (s,) in conn.execute("SELECT status FROM attempts"))
    # the refusal is answered 400 at once; the other two requests' first attempts got a 5xx ...
    assert statuses[0] == 400 and len(statuses) == 3 and all(s >= 500 for s in statuses[1:])
    assert all(latency >= 0 for (latency,) in conn.execute("SELECT latency FROM attempts"))
    # ... and their second attempts got the answers, whose rows say when they were sent and how long they took
    timing = conn.execute(
        "SELECT r.sent_at, r.latency, r.created, a.at FROM responses r JOIN attempts a ON a.key = r.key"
    ).fetchall()
    assert len(timing) == 2
    assert all(
        failed < sent and latency >= 0 and sent + latency <= made + 1e-3
        for sent, latency, made, failed in timing
    )
    assert details.attempts_of(conn, [k for (k,) in conn.execute("SELECT key FROM responses")]) == {
        key: details.Attempts(2, latency, [str(status), "200"])
        for key, latency, status in conn.execute(
            "SELECT r.key, r.latency, a.status FROM responses r JOIN attempts a USING (key)"
        )
    }
    ok, refused = conn.execute(
        "SELECT id, finished, failed_key, prompt_tokens, answer_tokens, longest_answer FROM conversations "
        "ORDER BY position"
    ).fetchall()
    assert ok[1:3] == (1, None) and ok[3] > 0 and ok[4] >= ok[5] > 0
    assert refused[1] == 0 and conn.execute(
        "SELECT status FROM failures WHERE key = ?", (refused[2],)
    ).fetchone() == (400,)
    assert conn.execute("SELECT source, reason FROM rejects").fetchall() == [
        ("in.jsonl:3", "no user turn left after clean-up (empty, system-only or assistant-only conversation)")
    ]
    assert conn.execute("SELECT ended >= created FROM runs").fetchone() == (1,)
    conn.close()


async def test_pages_forbid_scripts_and_answer_bad_addresses_plainly(filled):
    import aiohttp

    path, run_id = filled
    runner, url = await server.start(path, "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as response:
                assert response.status == 200
                assert "script-src" not in response.headers["Content-Security-Policy"]
                assert "default-src 'none'" in response.headers["Content-Security-Policy"]
            for address, status in (
                ("runs/nope/conversations", 404),
                (f"runs/{run_id}/conversations/999999", 404),
                (f"runs/{run_id}/conversations?after=x", 400),
                (f"runs/{run_id}/conversations?shard=9/2", 400),
                (f"runs/{run_id}/failures?after=1.5", 400),
                (f"runs/{run_id}/charts", 200),
            ):
                async with session.get(url + address) as response:
                    assert response.status == status, address
    finally:
        await runner.cleanup()


async def test_a_long_run_is_searchable_while_it_goes(tmp_path, monkeypatch):
    monkeypatch.setattr("distill.cache_view.SEARCH_BATCH", 3)
    path = tmp_path / "long.sqlite"
    async with Cache(path) as cache:
        await cache.record_run("run", "/in.jsonl", {"model": "m"})
        for n in range(4):
            conversation = Conversation(f"c{n}", [Message("user", f"word{n}")], f"in.jsonl:{n + 1}")
            cache.add_conversations(
                "run", [(n, conversation.id, conversation.source, encode_conversation(conversation))]
            )
            await cache.flush()  # one group commit each: the third makes an indexing pass
        conn = store.open_cache(path)
        found = {
            w: positions(store.conversation_page(conn, "run", store.ListQuery(text=w)))
            for w in ("word2", "word3")
        }
        assert found == {"word2": [2], "word3": []}
        assert store.conversation_page(conn, "run", store.ListQuery(text="word3")).unindexed == 1
        conn.close()


async def test_a_cache_from_before_migration_8_moves_its_answered_attempts_onto_the_answers(tmp_path):
    from distill.cache import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION
    from distill.cache_view import ANSWER_TIMING_MIGRATION

    before = MIGRATIONS.index(ANSWER_TIMING_MIGRATION)  # the schema version of a cache before migration 8
    path = tmp_path / "cache.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript("".join(MIGRATIONS[:before]))  # every attempt in `attempts`, answered ones too
    conn.execute(f"PRAGMA user_version = {before}")
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.executemany(
        "INSERT INTO responses VALUES (?, x'7b7d', 'answer', 'stop', 1, 2, ?)",
        [("retried", 20.0), ("first", 30.0), ("batched", 40.0)],
    )
    conn.executemany(
        "INSERT INTO attempts VALUES (?, ?, ?, ?, ?, ?)",
        [("retried", 10.0, 503, None, 0.5, None), ("retried", 19.0, 200, None, 0.75, None),
         ("first", 29.0, 200, None, 0.25, None), ("lost", 5.0, None, "ClientConnectionError", 1.0, None),
         ("batched", 35.0, 200, None, 3600.0, "batch-1")],  # a batch's result line stays a line
    )  # fmt: skip
    conn.commit()
    conn.close()
    async with Cache(path):
        pass
    conn = store.open_cache(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT key, sent_at, latency FROM responses ORDER BY key").fetchall() == [
        ("batched", None, None),
        ("first", 29.0, 0.25),
        ("retried", 19.0, 0.75),
    ]
    assert conn.execute("SELECT key, status FROM attempts ORDER BY at").fetchall() == [
        ("lost", None),
        ("retried", 503),
        ("batched", 200),
    ]
    assert details.attempts_of(conn, ["retried", "first", "lost"]) == {
        "retried": details.Attempts(2, 0.75, ["503", "200"]),
        "first": details.Attempts(1, 0.25, ["200"]),
        "lost": details.Attempts(1, None, ["ClientConnectionError"]),
    }
