"""Every provider's rate-limit headers, read from a plain mapping into one RateSignals (limits per second)."""

from __future__ import annotations

import logging
from email.utils import formatdate

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from distill.ratelimit_headers import (
    MAX_RETRY_AFTER,
    NO_SIGNALS,
    RateSignals,
    parse_duration,
    parse_rate_headers,
)

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def parse(headers: dict[str, str]) -> RateSignals:
    return parse_rate_headers(headers, wall_clock=lambda: NOW)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("6m0s", 360.0),
        ("1s", 1.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0.412s", 0.412),
        ("2.5", 2.5),
        ("17ms", 0.017),
        ("1m", 60.0),
    ],
)
def test_openai_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "5 minutes", "1x", "m", "-"])
def test_unreadable_durations_are_none(text):
    assert parse_duration(text) is None


def test_no_rate_headers_no_signals():
    assert parse({"content-type": "application/json", "x-request-id": "abc"}) is NO_SIGNALS
    assert parse({"x-not-retry-after": "5", "x-my-x-ratelimit-limit": "1"}) is NO_SIGNALS  # names start so


def test_rate_headers_are_found_among_others_in_any_case():
    headers = CIMultiDictProxy(
        CIMultiDict([("Content-Type", "application/json"), ("X-RateLimit-Limit-Requests", "600")])
    )
    assert parse(headers).requests_per_second == pytest.approx(10.0)
    assert parse(CIMultiDict([("Date", "x"), ("RETRY-AFTER", "3")])).retry_after == 3.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "2"}, 2.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"RETRY-AFTER": "3", "Retry-After-Ms": "250"}, 0.25),  # the precise one wins
        ({"retry-after": formatdate(NOW + 30, usegmt=True)}, 30.0),
        ({"retry-after": formatdate(NOW - 30, usegmt=True)}, 0.0),  # a date in the past: go now
        ({"retry-after": "-4"}, 0.0),
    ],
)
def test_retry_after_in_seconds_milliseconds_and_http_dates(headers, expected):
    assert parse(headers).retry_after == pytest.approx(expected, abs=1.0 if "," in str(headers) else 1e-9)


def test_an_absurd_retry_after_is_clamped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="distill.rate"):
        assert parse({"retry-after": "86400"}).retry_after == MAX_RETRY_AFTER
        assert parse({"retry-after": formatdate(NOW + 7 * 86400, usegmt=True)}).retry_after == MAX_RETRY_AFTER
    assert len(caplog.records) == 2 and "at most" in caplog.records[0].getMessage()


def test_an_unreadable_retry_after_is_ignored(caplog):
    with caplog.at_level(logging.WARNING, logger="distill.rate"):
        assert parse({"retry-after": "tomorrow-ish"}).retry_after is None
    assert "unreadable" in caplog.text


def test_openai_limits_are_per_minute_and_resets_durations():
    signals = parse(
        {
            "x-ratelimit-limit-requests": "6000",
            "x-ratelimit-remaining-requests": "5999",
            "x-ratelimit-reset-requests": "10ms",
            "x-ratelimit-limit-tokens": "1500000",
            "x-ratelimit-remaining-tokens": "0",
            "x-ratelimit-reset-tokens": "6m0s",
        }
    )
    assert signals.dialect == "openai"
    assert signals.requests_per_second == pytest.approx(100.0)
    assert signals.tokens_per_second == pytest.approx(25_000.0)
    assert signals.requests_reset == pytest.approx(0.01) and signals.tokens_reset == pytest.approx(360.0)
    assert signals.budget_left == 0 and signals.spent_until == pytest.approx(360.0)


def test_together_limits_are_per_second():
    signals = parse(
        {
            "X-RateLimit-Limit": "100",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": "0.412",
            "x-tokenlimit-limit": "5600",
            "x-tokenlimit-remaining": "4000",
        }
    )
    assert signals.dialect == "together"
    assert signals.requests_per_second == 100.0 and signals.tokens_per_second == 5600.0
    assert signals.requests_remaining == 0 and signals.tokens_remaining == 4000
    assert signals.spent_until == pytest.approx(0.412)


def test_a_reset_given_as_a_unix_time_is_made_relative():
    signals = parse({"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(NOW + 5)})
    assert signals.requests_reset == pytest.approx(5.0)


def test_anthropic_limits_are_per_minute_and_resets_rfc3339():
    signals = parse(
        {
            "anthropic-ratelimit-requests-limit": "4000",
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": "2027-01-15T08:00:02Z",
            "anthropic-ratelimit-tokens-limit": "400000",
            "anthropic-ratelimit-tokens-remaining": "399000",
            "anthropic-ratelimit-tokens-reset": "2027-01-15T08:00:00.500+00:00",
            "retry-after": "2",
        }
    )
    assert signals.dialect == "anthropic"
    assert signals.requests_per_second == pytest.approx(4000 / 60)
    assert signals.tokens_per_second == pytest.approx(400000 / 60)
    assert signals.requests_reset == pytest.approx(2.0) and signals.tokens_reset == pytest.approx(0.5)
    assert signals.retry_after == 2.0


def test_anthropic_input_token_limits_stand_in_for_tokens():
    signals = parse(
        {
            "anthropic-ratelimit-input-tokens-limit": "120000",
            "anthropic-ratelimit-input-tokens-remaining": "5",
        }
    )
    assert signals.tokens_per_second == pytest.approx(2000.0) and signals.tokens_remaining == 5


@pytest.mark.parametrize(
    "headers",
    [
        {"x-ratelimit-limit": "nan"},
        {"x-ratelimit-limit": "inf"},
        {"x-ratelimit-limit": "-5"},
        {"x-ratelimit-limit": "lots"},
        {"anthropic-ratelimit-requests-limit": "0", "anthropic-ratelimit-requests-reset": "not a time"},
        {"x-ratelimit-limit-requests": "", "x-ratelimit-reset-requests": "forever"},
    ],
)
def test_nonsense_values_are_ignored_not_trusted(headers):
    signals = parse(headers)
    assert signals.requests_per_second is None and signals.requests_reset is None


def test_nothing_spent_means_no_pause():
    assert parse({"x-ratelimit-remaining": "3", "x-ratelimit-reset": "1"}).spent_until is None
    assert RateSignals().budget_left is None
