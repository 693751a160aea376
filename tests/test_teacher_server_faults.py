"""The local teacher's faults: each kind as a real client sees it, reproducible draws, retries that succeed."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from distill.servers.teacher import TeacherKnobs, TeacherServer, chat_answer, request_hash

HANG_TIMEOUT = 0.3  # how long a client waits on a hung request; a proper answer gets 10 s


def chat(text: str) -> dict:
    return {"model": "teacher-70b", "messages": [{"role": "user", "content": text}]}


async def attempt(session: aiohttp.ClientSession, url: str, body: dict, timeout: float = 10.0):
    """(status, parsed JSON or the raw bytes when they do not parse) or the client's exception type."""
    try:
        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            raw = await response.read()
            try:
                return response.status, json.loads(raw)
            except json.JSONDecodeError:
                return response.status, raw
    except (aiohttp.ClientError, TimeoutError) as e:
        return type(e), None


async def test_each_fault_kind_fails_the_first_attempt_and_the_retry_succeeds():
    body = chat("hello")
    good = chat_answer(body["messages"])
    seen = {}
    for kind in ("server_error", "hang", "reset", "truncated", "empty", "throttle"):
        knobs = TeacherKnobs(fail_first_attempts=1, fail_first_kind=kind, throttle_retry_after=0.25)
        async with TeacherServer(knobs) as server, aiohttp.ClientSession() as session:
            url = server.base_url + "/chat/completions"
            seen[kind] = await attempt(session, url, body, HANG_TIMEOUT if kind == "hang" else 10.0)
            status, answer = await attempt(session, url, body)
            assert status == 200 and answer["choices"][0]["message"]["content"] == good, kind
            await asyncio.sleep(0.01)  # let a cancelled hang unwind
            stats = server.stats
            assert stats.faults[kind] == 1 and sum(stats.faults.values()) == 1, kind
            assert (
                stats.answered == 1
                and stats.received_by_hash[request_hash(body)] == 2
                and stats.in_flight == 0
            )
    status, error = seen["server_error"]
    assert status in (500, 503) and error["error"]["type"] == "server_error"
    assert seen["hang"] == (TimeoutError, None)
    assert seen["reset"][0] in (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)
    status, raw = seen["truncated"]
    assert status == 200 and isinstance(raw, bytes) and raw.startswith(b'{"id":')
    status, answer = seen["empty"]
    assert status == 200 and answer["choices"] == [] and answer["usage"]["total_tokens"] > 0
    status, error = seen["throttle"]
    assert status == 429 and error["error"]["type"] == "dynamic_request_limited"


async def test_throttle_sends_retry_after_headers():
    knobs = TeacherKnobs(throttle_rate=1.0, throttle_retry_after=0.25)
    async with TeacherServer(knobs) as server, aiohttp.ClientSession() as session:
        response = await session.post(server.base_url + "/chat/completions", json=chat("x"))
        assert response.status == 429
        assert response.headers["retry-after-ms"] == "250" and response.headers["Retry-After"] == "1"


async def test_connection_reset_is_a_tcp_reset():
    async with TeacherServer(TeacherKnobs(reset_rate=1.0)) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        payload = json.dumps(chat("x")).encode()
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        with pytest.raises(ConnectionResetError):
            await reader.read(1)
            await reader.read(1)
        writer.close()


async def draw_failures(knobs: TeacherKnobs, bodies: list[dict]) -> set[str]:
    async with TeacherServer(knobs) as server, aiohttp.ClientSession() as session:
        url = server.base_url + "/chat/completions"
        results = await asyncio.gather(*(attempt(session, url, b) for b in bodies))
    return {request_hash(b) for b, (status, _) in zip(bodies, results, strict=True) if status != 200}


async def test_fault_rates_are_reproducible_and_depend_on_the_seed():
    bodies = [chat(f"question {i}") for i in range(300)]
    first = await draw_failures(TeacherKnobs(error_rate=0.3, seed=1), bodies)
    again = await draw_failures(TeacherKnobs(error_rate=0.3, seed=1), list(reversed(bodies)))
    other = await draw_failures(TeacherKnobs(error_rate=0.3, seed=2), bodies)
    assert first == again
    assert first != other
    assert 50 <= len(first) <= 130  # 300 draws at 0.3: mean 90, sd 8


async def test_a_retried_request_gets_a_fresh_draw_and_eventually_succeeds():
    body = chat("keep trying")
    knobs = TeacherKnobs(error_rate=0.5, truncated_rate=0.2, seed=6)
    async with TeacherServer(knobs) as server, aiohttp.ClientSession() as session:
        url = server.base_url + "/chat/completions"
        statuses = []
        while not statuses or statuses[-1] != (200, True):
            status, answer = await attempt(session, url, body)
            statuses.append((status, isinstance(answer, dict) and "choices" in answer))
            assert len(statuses) < 40
    assert len(statuses) == 4 and statuses[2] == (200, False)  # seed 6: 5xx, 5xx, truncated, answer
    assert server.stats.answered == 1
    assert server.stats.received_by_hash[request_hash(body)] == len(statuses)
    assert sum(server.stats.faults.values()) == len(statuses) - 1


async def test_permanent_marker_fails_every_attempt_with_the_chosen_status():
    knobs = TeacherKnobs(permanent_marker="FORBIDDEN", permanent_status=422)
    async with TeacherServer(knobs) as server, aiohttp.ClientSession() as session:
        url = server.base_url + "/chat/completions"
        refused = [await attempt(session, url, chat("say FORBIDDEN things")) for _ in range(3)]
        fine = await attempt(session, url, chat("say nice things"))
        assert server.stats.faults["permanent"] == 3
    assert {status for status, _ in refused} == {422}
    assert "FORBIDDEN" in refused[0][1]["error"]["message"]
    assert fine[0] == 200


async def test_latency_delays_answers_and_jitter_adds_to_it():
    knobs = TeacherKnobs(latency=0.15, latency_jitter=0.1)
    async with TeacherServer(knobs) as server, aiohttp.ClientSession() as session:
        url = server.base_url + "/chat/completions"
        start = time.perf_counter()
        results = await asyncio.gather(*(attempt(session, url, chat(f"q{i}")) for i in range(20)))
        elapsed = time.perf_counter() - start
        assert server.stats.max_in_flight > 10  # they waited side by side, not one after another
    assert all(status == 200 for status, _ in results)
    assert 0.15 <= elapsed < 1.5  # one after another would take at least 20 x 0.15 s


async def test_hung_requests_are_released_when_the_client_gives_up():
    async with TeacherServer(TeacherKnobs(hang_rate=1.0)) as server, aiohttp.ClientSession() as session:
        url = server.base_url + "/chat/completions"
        results = await asyncio.gather(
            *(attempt(session, url, chat(f"q{i}"), HANG_TIMEOUT) for i in range(5))
        )
        await asyncio.sleep(0.05)
        assert server.stats.in_flight == 0 and server.stats.faults["hang"] == 5
    assert all(status is TimeoutError for status, _ in results)
