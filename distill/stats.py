"""Counters a run keeps while it goes, shown live by the progress display and at the end as the summary."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field


@dataclass(slots=True)
class RunStats:
    conversations_read: int = 0
    conversations_done: int = 0
    conversations_failed: int = 0
    rejects: int = 0
    turns_done: int = 0
    requests_sent: int = 0
    cache_hits: int = 0
    shared_in_flight: int = 0
    retries: int = 0
    rate_limited: int = 0
    finished_length: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_expected: int | None = None
    started: float = field(default_factory=time.monotonic)
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    # conversations whose every turn was already in the cache (done, but no work of this run)
    conversations_cached: int = 0
    # how often a request waited for each limit: "concurrency", "rpm", "tpm", "pause" (distill.limiter)
    waits: dict[str, int] = field(default_factory=dict)
    # US dollars, where the price is known: spent by this invocation, by earlier ones on the same settings
    cost_usd: float | None = None
    cost_before_usd: float | None = None
    budget_usd: float | None = None

    def count_wait(self, limit: str) -> None:
        self.waits[limit] = self.waits.get(limit, 0) + 1

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def requests_per_second(self) -> float:
        elapsed = self.elapsed()
        return self.requests_sent / elapsed if elapsed > 0 else 0.0

    def eta_seconds(self) -> float | None:
        finished = self.conversations_done + self.conversations_failed
        if not self.total_expected or not finished:
            return None
        return self.elapsed() * (self.total_expected - finished) / finished

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("started")
        d["failures"] = [{"id": i, "source": s, "reason": r} for i, s, r in self.failures]
        d["elapsed_seconds"] = round(self.elapsed(), 3)
        return d
