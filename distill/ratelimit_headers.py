"""What a provider's response headers say about its rate limits, in every dialect we know.

:func:`parse_rate_headers` reads a plain mapping of header names to values (any case; whichever HTTP client
carried the call) and returns one :class:`RateSignals`, with every limit per *second* and every reset in
seconds from now:

* ``Retry-After`` (seconds or an HTTP-date) and ``retry-after-ms``; absurd values are clamped, with a warning;
* OpenAI: ``x-ratelimit-limit|remaining|reset-requests`` and ``-tokens``; limits per minute, resets as Go
  durations (``6m0s``, ``1s``, ``20ms``);
* Together (and the local teacher): ``x-ratelimit-limit|remaining|reset`` and ``x-tokenlimit-limit|remaining``;
  limits per second, resets in seconds;
* Anthropic: ``anthropic-ratelimit-requests|tokens-limit|remaining|reset`` (and ``input-tokens``/``output-tokens``);
  limits per minute, resets as RFC 3339 times.
"""

from __future__ import annotations

import email.utils
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

log = logging.getLogger("distill.rate")

MAX_RETRY_AFTER = 300.0  # seconds: a longer Retry-After is taken as a server's mistake, not a plan
MAX_RESET = 3600.0
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)")


@dataclass(frozen=True, slots=True)
class RateSignals:
    """The server's word on its limits; None wherever it said nothing (or nothing readable)."""

    retry_after: float | None = None
    requests_per_second: float | None = None
    tokens_per_second: float | None = None
    requests_remaining: float | None = None
    tokens_remaining: float | None = None
    requests_reset: float | None = None
    tokens_reset: float | None = None
    dialect: str | None = None

    @property
    def budget_left(self) -> float | None:
        """The smaller of the request and token budgets left, where the server said either."""
        known = [v for v in (self.requests_remaining, self.tokens_remaining) if v is not None]
        return min(known) if known else None

    @property
    def spent_until(self) -> float | None:
        """Seconds until a spent budget (remaining 0) refills; None when no budget is spent."""
        waits = [
            reset
            for remaining, reset in (
                (self.requests_remaining, self.requests_reset),
                (self.tokens_remaining, self.tokens_reset),
            )
            if remaining is not None and remaining <= 0 and reset is not None and reset > 0
        ]
        return max(waits) if waits else None


NO_SIGNALS = RateSignals()


def parse_rate_headers(
    headers: Mapping[str, str], *, wall_clock: Callable[[], float] = time.time
) -> RateSignals:
    """Every rate-limit signal in ``headers`` (names in any case)."""
    # Most answers carry none: two substring searches over the names at C speed before a lowered copy of every
    # header (a name that only contains one of them, not as a prefix, is parsed and yields nothing)
    names = "\n".join(headers).lower()
    if "retry-after" not in names and "limit" not in names:
        return NO_SIGNALS
    h = {str(name).lower(): str(value) for name, value in headers.items()}
    now = wall_clock()
    fields = _openai(h) or _anthropic(h, now) or _together(h, now) or {}
    signals = RateSignals(retry_after=retry_after_seconds(h, now), **fields)
    return NO_SIGNALS if signals == NO_SIGNALS else signals


def retry_after_seconds(h: Mapping[str, str], now: float) -> float | None:
    """``retry-after-ms`` (more precise, preferred) or ``Retry-After`` (seconds or HTTP-date), clamped."""
    ms = _number(h.get("retry-after-ms"))
    if ms is not None:
        return _clamped(ms / 1000.0, "retry-after-ms", h["retry-after-ms"])
    text = h.get("retry-after")
    if text is None:
        return None
    seconds = _number(text)
    if seconds is None:
        try:
            seconds = email.utils.parsedate_to_datetime(text).timestamp() - now
        except (TypeError, ValueError, IndexError):
            log.warning("ignored an unreadable Retry-After header: %r", text[:80])
            return None
    return _clamped(seconds, "Retry-After", text)


def _clamped(seconds: float, name: str, text: str) -> float:
    if seconds < 0 or math.isnan(seconds):
        return 0.0  # a date in the past: the wait is over
    if seconds > MAX_RETRY_AFTER:
        log.warning(
            "the server asked to wait %s (%s: %r); waiting %.0f s at most", _human(seconds), name, text[:80],
            MAX_RETRY_AFTER,
        )  # fmt: skip
        return MAX_RETRY_AFTER
    return seconds


def _openai(h: Mapping[str, str]) -> dict | None:
    if not any(k in h for k in ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
                                "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens")):  # fmt: skip
        return None
    return {
        "requests_per_second": _per_minute(h.get("x-ratelimit-limit-requests")),
        "tokens_per_second": _per_minute(h.get("x-ratelimit-limit-tokens")),
        "requests_remaining": _number(h.get("x-ratelimit-remaining-requests")),
        "tokens_remaining": _number(h.get("x-ratelimit-remaining-tokens")),
        "requests_reset": _reset_duration(h.get("x-ratelimit-reset-requests")),
        "tokens_reset": _reset_duration(h.get("x-ratelimit-reset-tokens")),
        "dialect": "openai",
    }


def _anthropic(h: Mapping[str, str], now: float) -> dict | None:
    prefix = "anthropic-ratelimit-"
    if not any(k.startswith(prefix) for k in h):
        return None
    tokens = "tokens" if f"{prefix}tokens-limit" in h else "input-tokens"
    return {
        "requests_per_second": _per_minute(h.get(f"{prefix}requests-limit")),
        "tokens_per_second": _per_minute(h.get(f"{prefix}{tokens}-limit")),
        "requests_remaining": _number(h.get(f"{prefix}requests-remaining")),
        "tokens_remaining": _number(h.get(f"{prefix}{tokens}-remaining")),
        "requests_reset": _until(h.get(f"{prefix}requests-reset"), now),
        "tokens_reset": _until(h.get(f"{prefix}{tokens}-reset"), now),
        "dialect": "anthropic",
    }


def _together(h: Mapping[str, str], now: float) -> dict | None:
    if not any(k in h for k in ("x-ratelimit-limit", "x-ratelimit-remaining", "x-tokenlimit-limit",
                                "x-tokenlimit-remaining", "x-ratelimit-reset")):  # fmt: skip
        return None
    reset = _reset_seconds(h.get("x-ratelimit-reset"), now)
    return {
        "requests_per_second": _positive(_number(h.get("x-ratelimit-limit"))),
        "tokens_per_second": _positive(_number(h.get("x-tokenlimit-limit"))),
        "requests_remaining": _number(h.get("x-ratelimit-remaining")),
        "tokens_remaining": _number(h.get("x-tokenlimit-remaining")),
        "requests_reset": reset,
        "tokens_reset": _reset_seconds(h.get("x-tokenlimit-reset"), now) or reset,
        "dialect": "together",
    }


def parse_duration(text: str | None) -> float | None:
    """Seconds in a Go-style duration (``6m0s``, ``1h2m3.5s``, ``20ms``) or a plain number of seconds."""
    if text is None:
        return None
    text = text.strip().lower()
    plain = _number(text)
    if plain is not None:
        return plain
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    return sum(float(n) * scale[u] for n, u in parts)


def _reset_duration(text: str | None) -> float | None:
    seconds = parse_duration(text)
    return None if seconds is None else _bounded_reset(seconds)


def _reset_seconds(text: str | None, now: float) -> float | None:
    """A reset in seconds; a value that looks like a Unix time (some servers send one) is made relative."""
    value = _number(text)
    if value is None:
        return _reset_duration(text)
    if value > 1e9:
        value -= now
    return _bounded_reset(value)


def _until(text: str | None, now: float) -> float | None:
    """Seconds from ``now`` until an RFC 3339 time."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return _bounded_reset(moment.timestamp() - now)


def _bounded_reset(seconds: float) -> float | None:
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RESET)


def _per_minute(text: str | None) -> float | None:
    value = _positive(_number(text))
    return value / 60.0 if value is not None else None


def _positive(value: float | None) -> float | None:
    return value if value is not None and value > 0 and math.isfinite(value) else None


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _human(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds:.0f} s"
