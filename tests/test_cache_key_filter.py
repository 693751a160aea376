"""Look-ups a fresh cache cannot answer are skipped, never one it can (issue 12); the answered attempt's timing."""

from __future__ import annotations

import sqlite3

from distill import plan
from distill.cache import Cache
from distill.client import TeacherClient
from distill.conversation import Conversation, Message
from distill.engine import Engine
from distill.key_filter import KeyFilter
from distill.requests import TeacherResponse
from distill.settings import RunSettings


def answer(n: int) -> TeacherResponse:
    return TeacherResponse(f"answer {n}", "stop", 1, 1)


def test_a_key_filter_holds_every_key_added_and_misses_most_others():
    keys = KeyFilter(slot_bits=16)
    added = [f"added {n}" for n in range(1000)]
    for key in added:
        keys.add(key)
    assert all(keys.may_hold(key) for key in added)
    others = [f"other {n}" for n in range(10_000)]
    # 1000 keys in 65536 slots: about 1.5% of the others share a slot with one of them
    assert sum(keys.may_hold(key) for key in others) < 400


async def test_a_fresh_cache_knows_which_keys_it_cannot_hold(tmp_path):
    async with Cache(tmp_path / "c.sqlite") as cache:
        assert not cache.may_hold("answered") and not cache.may_hold("failed")
        cache.put("answered", b"{}", answer(1))
        cache.put_failure("failed", "400 from the teacher", 400)
        assert cache.may_hold("answered") and cache.may_hold("failed")
        await cache.flush()  # committed: a look-up finds them in the file, and they are still looked up
        assert cache.may_hold("answered") and (await cache.get("answered")).text == "answer 1"
        assert (await cache.get("failed")).status == 400
        assert not cache.may_hold("never stored")


async def test_a_cache_that_held_answers_looks_every_key_up(tmp_path):
    async with Cache(tmp_path / "c.sqlite") as cache:
        cache.put("answered", b"{}", answer(1))
    async with Cache(tmp_path / "c.sqlite") as cache:
        assert cache.may_hold("answered") and cache.may_hold("anything else")
        assert (await cache.get("answered")).text == "answer 1"


async def run_engine(path, settings: RunSettings, conversations: list[Conversation], **cache_options):
    async with Cache(path, **cache_options) as cache, TeacherClient.for_settings(settings, None) as client:
        return await Engine(settings, cache, client).run(conversations, "run", "in")


async def test_a_question_asked_twice_in_one_run_over_a_fresh_cache_is_sent_once(tmp_path, teacher):
    question = [Message("user", "the same question")]
    conversations = [Conversation(f"c{n}", question, f"in:{n}") for n in range(3)]
    settings = RunSettings(model="m", base_url=teacher.base_url, concurrency=1)
    stats = await run_engine(tmp_path / "c.sqlite", settings, conversations, commit_interval=0.001)
    assert stats.requests_sent == 1 and stats.cache_hits == 2 and stats.conversations_done == 3
    assert teacher.stats.answered == 1


async def test_a_run_over_a_fresh_cache_looks_nothing_up(tmp_path, teacher, monkeypatch):
    looked_up: list[str] = []
    lookup = Cache._lookup
    monkeypatch.setattr(Cache, "_lookup", lambda cache, keys: looked_up.extend(keys) or lookup(cache, keys))
    conversations = [Conversation(f"c{n}", [Message("user", f"question {n}")], f"in:{n}") for n in range(20)]
    settings = RunSettings(model="m", base_url=teacher.base_url, concurrency=4)
    stats = await run_engine(tmp_path / "c.sqlite", settings, conversations)
    assert stats.requests_sent == 20 and looked_up == []
    # over a cache that holds answers, every key is looked up
    request = plan.request_for(conversations[0], settings, 0)
    async with Cache(tmp_path / "c.sqlite") as cache, TeacherClient.for_settings(settings, None) as client:
        assert (await Engine(settings, cache, client).answer(request)).text
    assert looked_up == [request.key] and teacher.stats.answered == 20


async def test_the_answered_attempt_is_stored_on_its_answer_and_any_other_in_attempts(tmp_path):
    async with Cache(tmp_path / "c.sqlite") as cache:
        cache.log_attempt("retried", 10.0, 0.5, 503, "ServerError")
        cache.log_attempt("retried", 11.0, 0.25, 200, None)
        cache.put("retried", b"{}", answer(1))
        cache.log_attempt("orphan", 12.0, 0.125, 200, None)  # answered, but its answer never stored
        cache.put("batch", b"{}", answer(2))  # a Batch API's answer: no attempt logged
    with sqlite3.connect(tmp_path / "c.sqlite") as conn:
        assert conn.execute("SELECT key, sent_at, latency FROM responses ORDER BY key").fetchall() == [
            ("batch", None, None),
            ("retried", 11.0, 0.25),
        ]
        assert conn.execute("SELECT key, at, status FROM attempts ORDER BY at").fetchall() == [
            ("retried", 10.0, 503),
            ("orphan", 12.0, 200),
        ]
        assert conn.execute("SELECT key, at, status FROM attempt_log ORDER BY at").fetchall() == [
            ("retried", 10.0, 503),
            ("retried", 11.0, 200),
            ("orphan", 12.0, 200),
        ]
