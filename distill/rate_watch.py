"""What the engine sees of the server's limits, fed to the policy of :mod:`distill.rate_policy`, applied to the limiter.

The engine reports every request it sends and how it ended (accepted, 429, 503, another failure) and the rate
headers of every answer. :class:`RateWatch` keeps the counts of the last observation window, asks the policy
for the next state and sets the limiter's rate, and pauses the limiter when the server says to wait. At the end
of each window it hands a :class:`WindowRecord` to ``on_window`` (the run stores them in the cache).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from . import rate_policy as policy
from .limiter import RateLimiter
from .rate_policy import RateState, Window
from .ratelimit_headers import RateSignals

BUCKETS = 20  # the last window's counts, in twentieths
BARE_PAUSE = 0.1  # seconds everyone waits after a refusal that names no time, once the rate was already cut
SHED_STATUSES = (503, 529)
MIN_EVIDENCE = 20  # accepted answers a run needs before what it learned is worth keeping


@dataclass(frozen=True, slots=True)
class WindowRecord:
    """One observation window, as stored in the cache's ``rate_windows`` table."""

    at: float  # wall-clock (Unix) time of the window's end
    seconds: float
    sent: int
    accepted: int
    limited: int
    shed: int
    faults: int
    rpm: float  # the rate in force at the window's end, per minute


class RateWatch:
    """One run's view of the server's limits; see the module docstring."""

    def __init__(
        self,
        limiter: RateLimiter,
        *,
        rpm: float | None = None,
        tpm: float | None = None,
        stored_rpm: float | None = None,
        window: float = policy.WINDOW,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], float] = time.time,
        on_window: Callable[[WindowRecord], None] | None = None,
    ) -> None:
        self.limiter = limiter
        self.window = window
        self._clock = clock or limiter.now
        self._wall = wall_clock
        self.on_window = on_window
        self.user_rate = rpm / 60.0 if rpm else None
        self.user_tokens = tpm is not None
        now = self._clock()
        stored = stored_rpm / 60.0 if stored_rpm else None
        self.state: RateState = policy.start(user_rate=self.user_rate, stored_rate=stored, now=now)
        if tpm:
            limiter.set_token_rate(tpm / 60.0 * policy.HEADROOM)
        self._apply()
        self._bucket_width = window / BUCKETS
        self._seq = 0  # requests sent so far
        self._starts = [0] * BUCKETS  # the value of _seq when each bucket began
        self._refused = [0] * BUCKETS  # 429s and 503s, by arrival
        self._ok = [0] * BUCKETS  # accepted answers, by arrival
        self._unavailable = [0] * BUCKETS  # 503s, by arrival
        self._answers = [0] * BUCKETS
        self._bucket = int(now / self._bucket_width)
        self._tally = _Tally()
        self._window_start = now
        self._probe_clock = now  # when the probe last grew by the clock
        self._held_back = limiter.held_back
        self._probe_held_back = limiter.held_back  # what the rate had held back when the last request left
        self.waiting: Callable[[], int] = lambda: limiter.waiting  # requests held back now
        self.limited_total = 0
        self.shed_total = 0
        self.accepted_total = 0
        self.faults_total = 0
        self.latency_total = 0.0  # summed seconds from departure to answer of the accepted requests
        # answers a second accepted over the busiest two whole windows in a row, and the last whole window
        # (accepted, seconds)
        self._busiest_two = 0.0
        self._last_whole: tuple[int, float] | None = None

    # -- what the engine reports --------------------------------------------------------------------------

    def sent(self) -> Sent:
        """A request leaves now; returns its ticket, for :meth:`accepted`, :meth:`limited` and :meth:`unavailable`."""
        now = self._tick()
        self._seq += 1
        self._tally.sent += 1
        if self.state.phase == "probe":
            # this request may have waited with none waiting now: with one or two in flight, none waits at the
            # moment one leaves or an answer comes, and the probe would stay at its starting rate for the run
            if self._held_since(self._probe_held_back):
                self.state = policy.probe_growth(self.state, now - self._probe_clock)
                self._apply()
            self._probe_held_back = self.limiter.held_back
            self._probe_clock = now
        return Sent(now, self._seq)

    def accepted(self, ticket: Sent, signals: RateSignals) -> None:
        now = self._tick()
        sent_at = ticket.at
        self.accepted_total += 1
        self.latency_total += now - sent_at
        self._tally.accepted += 1
        self._ok[self._bucket % BUCKETS] += 1
        self._answers[self._bucket % BUCKETS] += 1
        if signals.dialect is not None:
            self._heed(signals)
        if self.state.phase == "probe" and self.waiting():
            self.state = policy.accepted_growth(self.state, now - sent_at)
            self._apply()

    def limited(self, ticket: Sent, signals: RateSignals | None) -> None:
        """A 429."""
        self._tick()
        self._tally.limited += 1
        self.limited_total += 1
        self._refused[self._bucket % BUCKETS] += 1
        self._answers[self._bucket % BUCKETS] += 1
        self._rate_signal(ticket, signals)

    def unavailable(self, ticket: Sent, signals: RateSignals | None) -> bool:
        """A 503 (or 529): True when it is part of a burst of shedding (a rate signal), False for a fault."""
        self._tick()
        self._tally.shed += 1
        b = self._bucket % BUCKETS
        self._refused[b] += 1
        self._unavailable[b] += 1
        self._answers[b] += 1
        if not policy.is_shedding(sum(self._unavailable), sum(self._answers), sum(self._ok)):
            return False
        self.shed_total += 1
        self._rate_signal(ticket, signals)
        return True

    def fault(self) -> None:
        self._tick()
        self.faults_total += 1
        self._tally.faults += 1
        self._answers[self._bucket % BUCKETS] += 1

    @property
    def sent_total(self) -> int:
        return self._seq

    # -- decisions ----------------------------------------------------------------------------------------

    def _rate_signal(self, ticket: Sent, signals: RateSignals | None) -> None:
        now = self._clock()
        cut_already = now < self.state.hold_until
        before = self.state
        sent_rate = (self._seq - self._seq_at(now - self.window)) / self.window
        self.state = policy.signal(self.state, self.accepted_rate(ticket), now, self.window, sent_rate)
        if self.state is not before:
            self._tally.decreased = True
            self._apply()
        if signals is not None and signals.dialect is not None:
            self._heed(signals)
        wait = signals.retry_after if signals is not None else None
        if wait is None and signals is not None:
            wait = signals.spent_until
        if wait is not None:
            self.limiter.pause(wait)
        elif cut_already:
            self.limiter.pause(BARE_PAUSE)  # the server still refuses after the cut: its window is spent

    def _heed(self, signals: RateSignals) -> None:
        """Limits the server states, and a budget it says is spent."""
        if signals.requests_per_second:
            told = policy.told(self.state, signals.requests_per_second, self.user_rate)
            if told is not self.state:
                self.state = told
                self._apply()
        if signals.tokens_per_second and not self.user_tokens:
            tps = signals.tokens_per_second * policy.HEADROOM
            if self.limiter.token_rate != tps:
                self.limiter.set_token_rate(tps)
        spent = signals.spent_until
        if spent is not None:
            self.limiter.pause(spent)

    def accepted_rate(self, refused: Sent) -> float:
        """Requests per second the server accepted over the window up to the ``refused`` request's departure.

        Requests sent after a refused one are likely refused too (a window's budget is spent in order), and
        their refusals may still be on their way: so what counts is what left in the window before it, less the
        refusals that came back over the last window.
        """
        before = refused.seq - self._seq_at(refused.at - self.window)
        return max(0, before - sum(self._refused)) / self.window

    def _seq_at(self, moment: float) -> int:
        """How many requests had left at ``moment`` (to a bucket; the oldest bucket kept when it is older)."""
        bucket = max(int(moment / self._bucket_width), self._bucket - BUCKETS + 1)
        return self._starts[bucket % BUCKETS] if bucket <= self._bucket else self._seq

    def _held_since(self, mark: int) -> bool:
        """Whether the rate holds a request back now, or held one back since the limiter's count was ``mark``."""
        return self.waiting() > 0 or self.limiter.held_back > mark

    def _apply(self) -> None:
        if self.limiter.request_rate != self.state.rate:
            self.limiter.set_request_rate(self.state.rate)

    # -- time ---------------------------------------------------------------------------------------------

    def _tick(self) -> float:
        """Move the buckets and, when a window has passed, close it. Returns the time."""
        now = self._clock()
        bucket = int(now / self._bucket_width)
        if bucket != self._bucket:
            for b in range(self._bucket + 1, min(bucket, self._bucket + BUCKETS) + 1):
                for counts in (self._refused, self._ok, self._unavailable, self._answers):
                    counts[b % BUCKETS] = 0
                self._starts[b % BUCKETS] = self._seq
            self._bucket = bucket
        if now - self._window_start >= self.window:
            self._close_window(now)
        return now

    def _close_window(self, now: float) -> None:
        tally, self._tally = self._tally, _Tally()
        busy = self._held_since(self._held_back)
        self._held_back = self.limiter.held_back
        seen = Window(
            tally.sent, tally.accepted, tally.limited, tally.shed, tally.faults, busy, tally.decreased
        )
        self.state = policy.window_end(self.state, seen)
        self._apply()
        seconds = now - self._window_start
        self._window_start = now
        self._note_accepted(tally, seconds)
        if self.on_window is not None:
            self.on_window(
                WindowRecord(
                    self._wall(),
                    seconds,
                    tally.sent,
                    tally.accepted,
                    tally.limited,
                    tally.shed,
                    tally.faults,
                    self.state.per_minute,
                )  # fmt: skip
            )

    def _note_accepted(self, tally: _Tally, seconds: float) -> None:
        if seconds < self.window:
            self._last_whole = None
            return
        if self._last_whole is not None:
            accepted, spent = self._last_whole
            both = (accepted + tally.accepted) / (spent + seconds)
            self._busiest_two = max(self._busiest_two, both)
        self._last_whole = (tally.accepted, seconds)

    def finish(self) -> None:
        """Close the window in progress (the end of a run), so that its counts are recorded too."""
        tally = self._tally
        if tally.sent or tally.answers:
            self._close_window(self._clock())

    def learned_rpm(self) -> float | None:
        """The per-minute rate worth remembering for the next run: None while nothing was learned."""
        state = self.state
        if state.source in ("probe", "--rpm") or self.accepted_total < MIN_EVIDENCE:
            return None
        if state.source == "told" and state.ceiling is not None:
            return state.ceiling / policy.HEADROOM * 60.0
        level = state.target if state.target is not None else state.rate
        if self._busiest_two:
            # A decrease counts the requests that left in the second before a refused one, which is not aligned
            # with the server's windows (nor is the engine's clock with the server's when the loop is busy): one
            # such count may take in parts of two server windows. The server never accepted more than the busiest
            # two whole windows in a row did, by arrival.
            level = min(level, self._busiest_two)
        return level * 60.0


class Sent(NamedTuple):
    """A request's departure: when, and its number in the run (a tuple: one is made per request)."""

    at: float
    seq: int


@dataclass(slots=True)
class _Tally:
    sent: int = 0
    accepted: int = 0
    limited: int = 0
    shed: int = 0
    faults: int = 0
    decreased: bool = False

    @property
    def answers(self) -> int:
        return self.accepted + self.limited + self.shed + self.faults
