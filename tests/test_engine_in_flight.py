"""A request already in flight is awaited by every other asker, whatever its outcome (against the local teacher)."""

from __future__ import annotations

import asyncio

import pytest

from distill.cache import Cache, Failure
from distill.client import TeacherClient
from distill.engine import Engine
from distill.errors import AuthenticationError
from distill.requests import TeacherRequest, TeacherResponse
from distill.settings import RunSettings

MODEL = "teacher-model"


def request(text: str) -> TeacherRequest:
    return TeacherRequest("chat", MODEL, (), messages=(("user", text),))


async def ask_together(teacher, tmp_path, text: str, api_key: str = "local") -> list:
    settings = RunSettings(model=MODEL, base_url=teacher.base_url, concurrency=8, attempts=1)
    async with Cache(tmp_path / "c.sqlite") as cache, TeacherClient.for_settings(settings, api_key) as client:
        engine = Engine(settings, cache, client)
        results = await asyncio.gather(
            *(engine.answer(request(text)) for _ in range(5)), return_exceptions=True
        )
        assert engine._in_flight == {}
        return [results, engine.stats.shared_in_flight]


async def test_an_answer_in_flight_is_shared(teacher, tmp_path):
    teacher.set_knobs(latency=0.05)
    results, shared = await ask_together(teacher, tmp_path, "hello")
    assert teacher.stats.requests == 1 and shared == 4
    assert all(isinstance(r, TeacherResponse) and r == results[0] for r in results)


async def test_a_failure_in_flight_is_shared(teacher, tmp_path):
    teacher.set_knobs(latency=0.05, permanent_marker="doomed", permanent_status=422)
    results, shared = await ask_together(teacher, tmp_path, "doomed question")
    assert teacher.stats.requests == 1 and shared == 4
    assert all(isinstance(r, Failure) and r.status == 422 for r in results)


async def test_an_error_in_flight_reaches_every_asker(teacher, tmp_path):
    teacher.set_knobs(latency=0.05, api_key="the-right-key")
    results, shared = await ask_together(teacher, tmp_path, "hello", api_key="a-wrong-key")
    assert shared == 4
    assert all(isinstance(r, AuthenticationError) for r in results)


@pytest.fixture(autouse=True)
def _quiet_loop(caplog):  # an error set on a future nobody else awaited would be logged: none must be
    yield
    assert "exception was never retrieved" not in caplog.text
