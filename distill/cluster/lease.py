"""One rate limit for many shards: a broker hands out short leases of the cluster's request and token budget.

The protocol has two messages, so that the controller that decides the cluster's rate (issue 11's, in
:mod:`distill.cluster.control`) sees every shard's outcome in one place:

* a shard asks for a **lease**: ``grant(requests=N, tokens=T, report)`` -> :class:`Lease` ``(delay, duration,
  requests, tokens)``: "send at most N requests estimated at T tokens, evenly over ``duration`` seconds starting
  ``delay`` seconds from now";
* it **reports**, with each ask (or at once, with :meth:`LeaseBroker.report`, when it meets a 429), what happened
  since its last report: :class:`~distill.cluster.control.Report` (requests sent, accepted, refused, shed, failed,
  their latency, what the server said of its limits, the tokens over or under the estimate, what they cost).

The broker keeps one timeline for the whole cluster, as :mod:`distill.limiter` keeps one for a process: two
GCRA cells (requests and tokens) at the rate the controller sets (under ``--rpm``/``--tpm`` if given; learned
from the server's answers otherwise, starting from a rate an earlier run stored). A lease is a slice of that timeline: its start is when the
cells are free, and granting it moves them on by ``N / rate`` and ``T / token rate``. Leases of different
shards therefore never overlap in time, and a shard sends a lease's requests evenly over its slice, so what the
whole cluster sends over any window is what one process pacing at the same rate would send. Times travel as
delays relative to the moment of the answer, never as clock readings (shards on other machines do not share the
broker's clock), so a shard places its slice late by the answer's one-way trip; two shards' slices can overlap by
the difference of their trips (a millisecond or so: a request at 6,000 RPM), never by more.

Every report goes to the controller (:meth:`LeaseBroker.report`), which replays it into issue 11's RateWatch:
a decrease or a pause it decides applies to every shard's next lease at once. A lease's size follows the rate
(about :attr:`ClusterLimit.lease_seconds` of it), and the lease tells the shard the rate, so the shard knows
when to ask for the next one.

A slot of a lease that passes unused is lost (sending it late would overlap another shard's slice), so a shard
asks only while it has requests waiting, and for about :attr:`ClusterLimit.lease_seconds` of the cluster's rate.

This module knows nothing of Ray: :class:`LeaseBroker` is wrapped by a Ray actor in
:mod:`distill.cluster.actors`; a shard's side, which takes any coroutine function that asks for a lease, is
:class:`distill.cluster.leased.LeasedLimiter`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import astuple, dataclass

from ..limiter import Budget, Clock
from .budget import BudgetBroker
from .control import ClusterController, Report

__all__ = ["ClusterLimit", "Lease", "LeaseBroker", "Report"]


@dataclass(frozen=True, slots=True)
class Lease:
    """N request slots (and T tokens) evenly over ``duration`` s, starting ``delay`` s after it was granted;
    ``rate``: the cluster's request rate when it was granted (per second); ``pause``: see below. A shard holding
    slots of an earlier lease drops them when the rate fell, and holds them back during the pause."""

    delay: float
    duration: float
    requests: int
    tokens: int = 0
    rate: float = 0.0
    pause: float = 0.0  # seconds from the answer during which the cluster sends nothing (a 429's Retry-After)


@dataclass(frozen=True, slots=True)
class ClusterLimit:
    """The cluster's limits and how finely they are leased."""

    rpm: float | None = None
    tpm: float | None = None
    lease_seconds: float = 0.1
    stored_rpm: float | None = None  # the rate an earlier run learned for this server and model
    budget_usd: float | None = None  # a cluster-wide --budget (distill.cluster.budget)
    spent_before_usd: float = 0.0  # what counts against it from earlier invocations (--budget-scope total)


class LeaseBroker:
    """The cluster-wide budget (one instance, in the limiter actor). ``clock`` is injectable for tests."""

    def __init__(
        self, limit: ClusterLimit, clock: Clock, wall_clock: Callable[[], float] | None = None
    ) -> None:
        self.limit = limit
        self._clock = clock
        self.control = ClusterController(limit.rpm, limit.tpm, limit.stored_rpm, clock, wall_clock)
        self.budget = BudgetBroker(limit.budget_usd, limit.spent_before_usd) if limit.budget_usd else None
        self._requests = Budget(self.control.request_rate)
        self._tokens: Budget | None = None
        self.granted = 0
        self.leases = 0
        self.idle_seconds = 0.0  # gaps in the timeline between leases: rate no shard was lent

    def grant(self, requests: int, tokens: int = 0, report: Report | None = None) -> Lease:
        """A lease of up to ``requests`` requests and ``tokens`` tokens (both capped at a lease's worth)."""
        if report is not None:
            self.report(report)
        now = self._clock()
        self._follow_rates(now)
        requests, tokens = self._capped(max(1, requests), max(0, tokens))
        start = max(now, self.control.paused_until, self._requests.earliest(now))
        duration = requests / self._requests.rate
        if self._tokens and tokens:
            start = max(start, self._tokens.earliest(now))
            duration = max(duration, tokens / self._tokens.rate)
        busy_until = max((c.tat for c in (self._requests, self._tokens) if c), default=-math.inf)
        if math.isfinite(busy_until) and start > busy_until:
            self.idle_seconds += start - busy_until
        self._requests.spend(start, requests)
        if self._tokens and tokens:
            self._tokens.spend(start, tokens)
        self.granted += requests
        self.leases += 1
        return Lease(start - now, duration, requests, tokens, self._requests.rate, self._pause(now))

    def _pause(self, now: float) -> float:
        return max(0.0, self.control.paused_until - now)

    def _follow_rates(self, now: float) -> None:
        """The cells at the rates the controller decided (what is already lent flows out at the new rate)."""
        rate = self.control.request_rate
        if rate != self._requests.rate:
            self._requests.set_rate(rate, now)
        token_rate = self.control.token_rate
        if token_rate is None:
            self._tokens = None
        elif self._tokens is None:
            self._tokens = Budget(token_rate)
        elif token_rate != self._tokens.rate:
            self._tokens.set_rate(token_rate, now)

    def _capped(self, requests: int, tokens: int) -> tuple[int, int]:
        seconds = self.limit.lease_seconds
        average = tokens / requests
        requests = min(requests, max(1, int(self._requests.rate * seconds + 1e-9)))
        tokens = math.ceil(requests * average)
        if self._tokens and tokens:
            cap = max(1, int(self._tokens.rate * seconds + 1e-9))
            if tokens > cap:  # fewer requests, each at the average estimate; one request always fits
                requests = max(1, int(cap / average))
                tokens = math.ceil(requests * average)
        return requests, tokens

    def report(self, report: Report) -> Lease:
        """A shard's outcomes, to the controller; the tokens it over-estimated go back to the token cell.

        Returns an empty lease with the rate and pause decided, so the shard that reported a 429 applies them to
        the slots it holds at once (the others, with their next lease)."""
        if report.token_refund and self._tokens:
            self._tokens.refund(report.token_refund)
        self.control.observe(report)
        now = self._clock()
        return Lease(0.0, 0.0, 0, 0, self.control.request_rate, self._pause(now))

    def finish(self) -> dict:
        """Close the controller's last window; the state, with every window, for the driver to keep."""
        self.control.finish()
        return {**self.state(), "windows": [astuple(w) for w in self.control.windows]}

    def state(self) -> dict:
        """Counters for the progress line, the run's summary and the benchmarks."""
        return {
            "leases": self.leases,
            "granted": self.granted,
            "idle_seconds": round(self.idle_seconds, 4),
            **self.control.state(),
            **(self.budget.state() if self.budget is not None else {}),
        }
