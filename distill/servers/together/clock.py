"""Clocks for the fake service: real time by default, or a manual clock a test moves forward."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime


class Clock:
    """Monotonic seconds, with the wall-clock time they correspond to (for the API's timestamps)."""

    def __init__(self) -> None:
        self._origin = self.now()
        self._wall_origin = time.time()

    def now(self) -> float:
        return time.monotonic()

    def epoch(self, at: float) -> float:
        """The Unix time of clock reading ``at``."""
        return self._wall_origin + (at - self._origin)

    def iso(self, at: float) -> str:
        """Clock reading ``at`` as the ISO-8601 UTC string the API uses."""
        return datetime.fromtimestamp(self.epoch(at), UTC).isoformat().replace("+00:00", "Z")


class ManualClock(Clock):
    """A clock that only moves when told to (``advance``); safe to move from another thread."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        super().__init__()

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds
