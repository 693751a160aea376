"""The local teacher's rate-limit knobs of issue 11: header dialects, 503 shedding, bare refusals, a limit that
changes mid-run. Each dialect's headers are read back by distill's own parser."""

from __future__ import annotations

import pytest
from support import FakeClock

from distill.errors import UsageError
from distill.ratelimit_headers import parse_rate_headers
from distill.servers.teacher import TeacherKnobs
from distill.servers.teacher.ratelimit import WindowLimiter


@pytest.mark.parametrize("dialect", ["together", "openai", "anthropic"])
def test_every_dialect_tells_the_same_limit(dialect):
    clock = FakeClock(100.0)
    limiter = WindowLimiter(rpm=600, tpm=6000, clock=clock, dialect=dialect)
    admission = limiter.acquire(30)
    signals = parse_rate_headers(admission.headers)
    assert signals.dialect == dialect
    assert signals.requests_per_second == pytest.approx(10.0)
    assert signals.tokens_per_second == pytest.approx(100.0)
    assert signals.requests_remaining == 9 and signals.tokens_remaining == 70
    assert 0 < signals.requests_reset <= 1.0


def test_no_headers_at_all_under_none():
    limiter = WindowLimiter(rpm=600, tpm=None, clock=FakeClock(100.0), dialect="none")
    assert limiter.acquire(1).headers == {}


def test_the_limit_changes_after_the_given_seconds_from_the_first_request():
    clock = FakeClock(100.0)
    limiter = WindowLimiter(rpm=600, tpm=None, clock=clock, rpm_after=300, change_after=6.0)
    clock.now += 3.0  # the clock starts at the first request, not at the server's start
    assert sum(limiter.acquire(1).admitted for _ in range(20)) == 10
    clock.now += 5.5
    assert sum(limiter.acquire(1).admitted for _ in range(20)) == 10
    clock.now += 1.0  # 6.5 s after the first request
    assert sum(limiter.acquire(1).admitted for _ in range(20)) == 5


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"limit_status": 500}, "--limit-status"),
        ({"rate_headers": "klingon"}, "--rate-headers"),
        ({"rpm_after": 10.0}, "give --rpm too"),
        ({"rpm": 60.0, "rpm_after": -1.0}, "--rpm-after"),
    ],
)
def test_bad_knobs_are_refused(changes, message):
    with pytest.raises(UsageError, match=message):
        TeacherKnobs(**changes)


async def test_a_limit_shed_as_503_without_headers(teacher):
    import aiohttp

    teacher.set_knobs(rpm=60, limit_status=503, retry_after=False, rate_headers="none")
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as session:
        statuses, headers = [], []
        for _ in range(3):
            async with session.post(teacher.base_url + "/chat/completions", json=body) as response:
                statuses.append(response.status)
                headers.append({k.lower() for k in response.headers})
    assert statuses == [200, 503, 503]
    assert not any(h & {"retry-after", "retry-after-ms", "x-ratelimit-limit"} for h in headers)
    assert teacher.stats.rate_limited == 2
