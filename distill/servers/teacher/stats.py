"""What the local teacher received and how it answered: the numbers behind ``GET /stats``."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from .knobs import FAULT_KINDS


class TeacherStats:
    """Counters of one server. Request hashes are :func:`~distill.servers.teacher.answers.request_hash`.

    ``requests`` counts every POST to a completion route. ``received_by_hash`` counts, per distinct request,
    the times it got past auth, validation and the rate limit (so it is what the server did work for, and a
    429 from the limiter is not in it); ``answered_by_hash`` the times it was answered 200 with a proper body.
    """

    def __init__(self, track_hashes: bool = True) -> None:
        self.track_hashes = track_hashes
        self.in_flight = 0
        self.reset()

    def reset(self) -> None:
        """Zero every counter (``POST /stats/reset``); requests in flight stay counted as in flight.

        The per-hash tables go too, so attempt numbers (and with them fault draws) start again from 0.
        """
        self.started = time.monotonic()
        self.requests = 0
        self.answered = 0
        self.rate_limited = 0
        self.bad_requests = 0
        self.unauthorized = 0
        self.faults: dict[str, int] = dict.fromkeys((*FAULT_KINDS, "permanent"), 0)
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.max_in_flight = self.in_flight
        self.received_by_hash: Counter[str] = Counter()
        self.answered_by_hash: Counter[str] = Counter()

    def receive(self, request_hash: str) -> int:
        """Count a valid request; return how many times the same request had been received before it."""
        if not self.track_hashes:
            return 0
        seen = self.received_by_hash[request_hash]
        self.received_by_hash[request_hash] = seen + 1
        return seen

    def answer(self, request_hash: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.answered += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        if self.track_hashes:
            self.answered_by_hash[request_hash] += 1

    def to_dict(self, with_hashes: bool = True) -> dict[str, Any]:
        """The JSON of ``GET /stats``; ``with_hashes=False`` leaves out the per-hash tables."""
        data: dict[str, Any] = {
            "requests": self.requests,
            "answered": self.answered,
            "rate_limited": self.rate_limited,
            "bad_requests": self.bad_requests,
            "unauthorized": self.unauthorized,
            "faults": dict(self.faults),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "distinct_requests": len(self.received_by_hash),
            "answered_more_than_once": sum(1 for n in self.answered_by_hash.values() if n > 1),
            "uptime_s": round(time.monotonic() - self.started, 3),
        }
        if with_hashes:
            data["received_by_hash"] = dict(self.received_by_hash)
            data["answered_by_hash"] = dict(self.answered_by_hash)
        return data
