"""The rate-limit headers of each provider, as the local teacher sends them (``--rate-headers``).

* ``together`` (the default): ``x-ratelimit-limit|remaining|reset`` and ``x-tokenlimit-limit|remaining``, limits
  per window (per second with the default one-second window), reset in seconds;
* ``openai``: ``x-ratelimit-limit|remaining|reset-requests`` and ``-tokens``, limits per minute, resets as Go
  durations (``0.412s``, ``20ms``);
* ``anthropic``: ``anthropic-ratelimit-requests|tokens-limit|remaining|reset``, limits per minute, resets as
  RFC 3339 times;
* ``none``: no rate headers at all (bare 429s, when ``--retry-after false`` too).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

RATE_HEADER_DIALECTS: tuple[str, ...] = ("together", "openai", "anthropic", "none")


@dataclass(frozen=True, slots=True)
class Budgets:
    """One window's budgets: limits and what is left of them (None where that budget is not enforced)."""

    window_s: float
    reset_s: float
    requests: tuple[int, int] | None = None  # (limit, remaining) in this window
    tokens: tuple[int, int] | None = None


def rate_headers(dialect: str, b: Budgets, wall_clock=time.time) -> dict[str, str]:
    if dialect == "none" or (b.requests is None and b.tokens is None):
        return {}
    if dialect == "openai":
        return _per_minute(b, "x-ratelimit-{}-{}", _go_duration(b.reset_s))
    if dialect == "anthropic":
        moment = datetime.fromtimestamp(wall_clock() + b.reset_s, UTC).isoformat(timespec="milliseconds")
        return _per_minute(b, "anthropic-ratelimit-{1}-{0}", moment.replace("+00:00", "Z"))
    return _together(b)


def _together(b: Budgets) -> dict[str, str]:
    reset = f"{b.reset_s:.3f}"
    headers: dict[str, str] = {}
    if b.requests is not None:
        headers["x-ratelimit-limit"] = str(b.requests[0])
        headers["x-ratelimit-remaining"] = str(max(0, b.requests[1]))
        headers["x-ratelimit-reset"] = reset
    if b.tokens is not None:
        headers["x-tokenlimit-limit"] = str(b.tokens[0])
        headers["x-tokenlimit-remaining"] = str(max(0, b.tokens[1]))
        if b.requests is None:
            headers["x-ratelimit-reset"] = reset
    return headers


def _per_minute(b: Budgets, pattern: str, reset: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    per_minute = 60.0 / b.window_s
    for name, budget in (("requests", b.requests), ("tokens", b.tokens)):
        if budget is not None:
            headers[pattern.format("limit", name)] = str(round(budget[0] * per_minute))
            headers[pattern.format("remaining", name)] = str(max(0, budget[1]))
            headers[pattern.format("reset", name)] = reset
    return headers


def _go_duration(seconds: float) -> str:
    """``1m2.5s``, ``0.412s`` or ``20ms``, as OpenAI writes its resets."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:g}s" if minutes else f"{rest:.3g}s"
