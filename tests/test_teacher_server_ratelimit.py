"""The local teacher's rate limit: per-minute budgets enforced over one-second windows, with provider headers."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from distill.servers.teacher import TeacherKnobs, TeacherServer
from distill.servers.teacher.ratelimit import WindowLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_each_window_admits_a_sixtieth_of_the_minute_budget():
    clock = FakeClock()
    limiter = WindowLimiter(rpm=600, tpm=None, clock=clock)
    verdicts = [limiter.acquire(1).admitted for _ in range(15)]
    assert verdicts == [True] * 10 + [False] * 5
    clock.now += 0.999
    assert not limiter.acquire(1).admitted
    clock.now += 0.002  # the next window
    assert limiter.acquire(1).admitted


def test_fractional_budgets_carry_over_so_a_minute_admits_exactly_the_limit():
    clock = FakeClock()
    limiter = WindowLimiter(rpm=90, tpm=None, clock=clock)  # 1.5 a second
    admitted_per_window = []
    for _ in range(60):
        admitted_per_window.append(sum(limiter.acquire(1).admitted for _ in range(5)))
        clock.now += 1.0
    assert set(admitted_per_window) == {1, 2}
    assert sum(admitted_per_window) == 90


def test_token_budget_refuses_what_does_not_fit_but_never_starves_a_big_request():
    clock = FakeClock()
    limiter = WindowLimiter(rpm=None, tpm=6000, clock=clock)  # 100 tokens a second
    assert limiter.acquire(60).admitted
    refused = limiter.acquire(60)
    assert not refused.admitted and refused.limited_by == "tokens"
    assert (
        refused.headers["x-tokenlimit-limit"] == "100" and refused.headers["x-tokenlimit-remaining"] == "40"
    )
    assert limiter.acquire(40).admitted
    clock.now += 1.0
    assert limiter.acquire(500).admitted  # bigger than a window, but the window was empty
    assert not limiter.acquire(1).admitted


def test_headers_report_the_window():
    clock = FakeClock()
    limiter = WindowLimiter(rpm=600, tpm=60000, clock=clock)
    clock.now += 0.25
    headers = limiter.acquire(30).headers
    assert headers == {
        "x-ratelimit-limit": "10",
        "x-ratelimit-remaining": "9",
        "x-ratelimit-reset": "0.750",
        "x-tokenlimit-limit": "1000",
        "x-tokenlimit-remaining": "970",
    }


def chat(i: int) -> dict:
    return {"model": "teacher-70b", "messages": [{"role": "user", "content": f"question number {i}"}]}


async def send(session: aiohttp.ClientSession, url: str, body: dict):
    async with session.post(url, json=body) as response:
        return response.status, response.headers, await response.read()


async def test_a_burst_over_the_per_second_budget_gets_429s_with_headers():
    async with TeacherServer(TeacherKnobs(rpm=600)) as server, aiohttp.ClientSession() as session:
        url = server.base_url + "/chat/completions"
        results = await asyncio.gather(*(send(session, url, chat(i)) for i in range(40)))
        assert server.stats.rate_limited == sum(status == 429 for status, _, _ in results)
    ok = [headers for status, headers, _ in results if status == 200]
    limited = [(headers, body) for status, headers, body in results if status == 429]
    assert 10 <= len(ok) <= 20  # 10 a window; a burst may straddle two windows
    assert len(ok) + len(limited) == 40
    headers, body = limited[0]
    assert headers["Retry-After"] == "1" and 0 < int(headers["retry-after-ms"]) <= 1000
    assert headers["x-ratelimit-limit"] == "10" and headers["x-ratelimit-remaining"] == "0"
    assert 0 < float(headers["x-ratelimit-reset"]) <= 1.0
    assert json.loads(body)["error"]["type"] == "dynamic_request_limited"
    assert all(h["x-ratelimit-limit"] == "10" and "x-ratelimit-remaining" in h for h in ok)


async def test_evenly_paced_requests_under_the_limit_are_never_refused():
    async with TeacherServer(TeacherKnobs(rpm=600)) as server, aiohttp.ClientSession() as session:
        url = server.base_url + "/chat/completions"
        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        for i in range(18):  # 8 a second, for 2.25 s: at most 9 in any one-second window
            await asyncio.sleep(max(0.0, start + i * 0.125 - loop.time()))
            tasks.append(asyncio.ensure_future(send(session, url, chat(i))))
        results = await asyncio.gather(*tasks)
    assert [status for status, _, _ in results] == [200] * 18
    assert server.stats.rate_limited == 0


async def test_token_limit_refuses_with_its_own_error_type_and_retry_after_can_be_left_out():
    knobs = TeacherKnobs(tpm=60 * 40, retry_after=False, token_counter="words")  # 40 words a second
    async with TeacherServer(knobs) as server, aiohttp.ClientSession() as session:
        url = server.base_url + "/chat/completions"
        results = [await send(session, url, chat(i)) for i in range(6)]  # about 16 words each
    statuses = [status for status, _, _ in results]
    assert statuses.count(200) in (2, 3, 4) and 429 in statuses
    headers, body = next((h, b) for status, h, b in results if status == 429)
    assert "Retry-After" not in headers and "retry-after-ms" in headers
    assert headers["x-tokenlimit-limit"] == "40" and "x-ratelimit-reset" in headers
    assert json.loads(body)["error"]["type"] == "dynamic_token_limited"


async def test_without_limits_no_rate_headers_are_sent():
    async with TeacherServer() as server, aiohttp.ClientSession() as session:
        _, headers, _ = await send(session, server.base_url + "/chat/completions", chat(1))
    assert not any(name.lower().startswith(("x-ratelimit", "x-tokenlimit")) for name in headers)
