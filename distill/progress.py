"""The live progress line on stderr, and the summary at the end."""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

from .stats import RunStats


def _human(n: float) -> str:
    for unit in ("", "k", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}T"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


def status_line(stats: RunStats) -> str:
    total = f"/{stats.total_expected}" if stats.total_expected else ""
    failed = f" ({stats.conversations_failed} failed)" if stats.conversations_failed else ""
    return (
        f"conversations {stats.conversations_done}{total}{failed} | turns {stats.turns_done} | "
        f"{stats.requests_per_second():.1f} req/s | cached {stats.cache_hits} | "
        f"tokens {_human(stats.prompt_tokens)} in {_human(stats.completion_tokens)} out | "
        f"retries {stats.retries} | {rate_part(stats)} | ETA {_duration(stats.eta_seconds())}"
    )


def rate_part(stats: RunStats) -> str:
    """The rate limiter's state: learned rate, refusals, time waited (shown live and in the summary)."""
    rate = f"rate {_human(stats.learned_rpm)}/min ({stats.rate_source}) | " if stats.learned_rpm else ""
    mean = stats.limiter_wait_seconds / stats.requests_sent if stats.requests_sent else 0.0
    return f"{rate}429s {stats.rate_limited} | 503s {stats.shed} | wait {mean * 1000:.0f} ms/req"


class Progress:
    """Redraws one status line a few times a second while a run goes (only on a terminal, unless forced)."""

    def __init__(
        self, stats: RunStats, stream: TextIO = sys.stderr, interval: float = 0.25, live: bool | None = None
    ):
        self.stats = stats
        self.stream = stream
        self.interval = interval
        self.live = stream.isatty() if live is None else live
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self.live:
            self._tick()

    def _tick(self) -> None:
        self.stream.write("\r\x1b[2K" + status_line(self.stats))
        self.stream.flush()
        self._handle = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self.stream.write("\r\x1b[2K")
            self.stream.flush()


def rate_summary(stats: RunStats) -> str:
    rate = f"{stats.learned_rpm:,.0f} requests/min ({stats.rate_source})" if stats.learned_rpm else "none"
    mean = stats.limiter_wait_seconds / stats.requests_sent if stats.requests_sent else 0.0
    return (
        f"{rate}, {stats.rate_limited} answered 429, {stats.shed} answered 503 while shedding, "
        f"a request waited {mean:.2f} s on average for its slot"
    )


def summary(stats: RunStats) -> str:
    lines = [
        f"conversations: {stats.conversations_done} written, {stats.conversations_failed} failed, "
        f"{stats.rejects} rejected input records",
        f"turns: {stats.turns_done} ({stats.finished_length} cut off at max_tokens)",
        f"requests: {stats.requests_sent} sent, {stats.cache_hits} from cache, {stats.shared_in_flight} shared "
        f"in flight, {stats.retries} retries, {stats.rate_limited} answered 429",
        f"rate limit: {rate_summary(stats)}",
        f"tokens: {stats.prompt_tokens} prompt, {stats.completion_tokens} completion (as the server reported)",
        f"time: {_duration(stats.elapsed())} ({stats.requests_per_second():.1f} requests/s)",
    ]
    for conv_id, source, reason in stats.failures[:20]:
        lines.append(f"  failed {conv_id} ({source}): {reason}")
    if len(stats.failures) > 20:
        lines.append(f"  ... and {len(stats.failures) - 20} more (see the manifest)")
    return "\n".join(lines)
