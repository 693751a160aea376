"""Issue 11's rate controller for a whole cluster: one :class:`~distill.rate_watch.RateWatch`, fed by every shard.

Each shard gathers what happened to its requests into a :class:`Report` (how many left, were accepted, refused
with a 429, shed with a 503, failed otherwise; the answers' summed latency; what the server said of its limits)
and sends it with its next lease ask, or at once on a 429: a few actor calls a second per shard, never one per
request. The broker replays each report into one RateWatch as the events a single process would have seen, in
the order a report can tell (departures, then answers), so the policy of :mod:`distill.rate_policy` runs
unchanged: it probes an unknown limit, cuts to what the server accepted on a refusal, climbs back, obeys a limit
the server states and never goes over ``--rpm``. The rate it decides, and any pause, is what the broker leases.

The watch drives a :class:`~distill.limiter.RateLimiter` that is never awaited (``pace``): it only holds the
rates and the pause the watch sets, which the broker reads. "Requests held back by the rate", which tells the
policy the rate is what limits the run, are the requests the shards report as having waited for their slot.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

from .. import rate_policy as policy
from ..limiter import Clock, RateLimiter
from ..rate_watch import RateWatch, Sent, WindowRecord
from ..ratelimit_headers import NO_SIGNALS, RateSignals


@dataclass(slots=True)
class Report:
    """What a shard saw since its last report: the controller's input."""

    accepted: int = 0
    rate_limited: int = 0
    retry_after: float | None = None
    remaining: float | None = None
    reset_seconds: float | None = None
    token_refund: int = 0  # estimated minus reported tokens of the answers received
    sent: int = 0
    shed: int = 0  # 503s judged part of a burst of shedding (a rate signal)
    faults: int = 0  # other failed attempts
    latency: float = 0.0  # summed seconds from departure to answer of the accepted requests
    held_back: int = 0  # requests that waited for the rate (for a lease, or for their slot)
    told_rpm: float | None = None  # the limits the server states, per minute
    told_tpm: float | None = None
    spent_usd: float = 0.0  # what the answers cost, where the price is known

    SUMMED = ("accepted", "rate_limited", "token_refund", "sent", "shed", "faults", "latency", "held_back",
              "spent_usd")  # fmt: skip

    def merge(self, other: Report) -> None:
        for name in self.SUMMED:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.retry_after = later(self.retry_after, other.retry_after)
        if other.remaining is not None:
            self.remaining, self.reset_seconds = other.remaining, other.reset_seconds
        self.told_rpm = other.told_rpm or self.told_rpm
        self.told_tpm = other.told_tpm or self.told_tpm

    def take(self) -> Report:
        """This report, and start a new one."""
        taken = Report(**{f.name: getattr(self, f.name) for f in fields(self)})
        for f in fields(self):
            setattr(self, f.name, f.default)
        return taken

    @property
    def answers(self) -> int:
        return self.accepted + self.rate_limited + self.shed + self.faults


def later(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


class ClusterController:
    """The cluster's RateWatch; see the module docstring. ``clock`` is the broker's (injectable)."""

    def __init__(
        self,
        rpm: float | None,
        tpm: float | None,
        stored_rpm: float | None,
        clock: Clock,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        self._clock = clock
        self.pace = RateLimiter(clock=clock)
        self.windows: list[WindowRecord] = []
        extra = {"wall_clock": wall_clock} if wall_clock is not None else {}
        self.watch = RateWatch(
            self.pace, rpm=rpm, tpm=tpm, stored_rpm=stored_rpm, clock=clock, on_window=self.windows.append,
            **extra,
        )  # fmt: skip
        self.started = (self.watch.state.per_minute, self.watch.state.source)  # where the run began
        self.watch.waiting = self._demand
        self._demand_until = -math.inf
        self._last: Sent | None = None
        self.totals = Report()

    @property
    def request_rate(self) -> float:
        return self.pace.request_rate or policy.START_RATE

    @property
    def token_rate(self) -> float | None:
        return self.pace.token_rate

    @property
    def paused_until(self) -> float:
        return self.pace.paused_until

    def _demand(self) -> int:
        """Whether the rate holds requests back now: a shard said so within the last window."""
        return int(self._clock() < self._demand_until)

    def observe(self, report: Report) -> None:
        """Replay one shard's report into the watch."""
        now = self._clock()
        self.totals.merge(report)
        if report.held_back:
            self.pace.held_back += report.held_back
            self._demand_until = now + self.watch.window
        for _ in range(report.sent):
            self._last = self.watch.sent()
        signals = self._signals(report)
        if report.accepted:
            latency = report.latency / report.accepted
            ticket = Sent(now - latency, self._last.seq if self._last else 0)
            for n in range(report.accepted):
                self.watch.accepted(ticket, signals if n == 0 and signals is not None else NO_SIGNALS)
            signals = None
        ticket = self._last or Sent(now, 0)
        for _ in range(report.faults):
            self.watch.fault()
        for _ in range(report.shed):
            self.watch.unavailable(ticket, None)
        for n in range(report.rate_limited):
            self.watch.limited(ticket, signals if n == 0 else None)

    @staticmethod
    def _signals(report: Report) -> RateSignals | None:
        """The server's word in ``report`` as the watch takes it, or None when it said nothing."""
        said = (report.retry_after, report.told_rpm, report.told_tpm, report.remaining)
        if all(value is None for value in said):
            return None
        return RateSignals(
            retry_after=report.retry_after,
            requests_per_second=report.told_rpm / 60.0 if report.told_rpm else None,
            tokens_per_second=report.told_tpm / 60.0 if report.told_tpm else None,
            requests_remaining=report.remaining,
            requests_reset=report.reset_seconds,
            dialect="cluster" if report.told_rpm or report.told_tpm or report.remaining is not None else None,
        )

    def finish(self) -> None:
        self.watch.finish()

    def state(self) -> dict:
        """The rate, where it comes from, and what is worth keeping for the next run."""
        state = self.watch.state
        return {
            "rpm": round(state.per_minute, 3),
            "source": state.source,
            "learned_rpm": self.watch.learned_rpm(),
            "start_rpm": round(self.started[0], 3),
            "start_source": self.started[1],
            **{f"reported_{k}": v for k, v in asdict(self.totals).items() if k in Report.SUMMED},
        }
