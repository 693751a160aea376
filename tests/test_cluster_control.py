"""Issue 14: the broker runs issue 11's controller on what the shards report (distill.cluster.control).

A discrete-event simulation on a fake clock (no Ray, no sleeps): shards ask one broker for leases, send their
slots, and report the answers of a server that admits ``LIMIT`` requests in each one-second window and refuses the
rest with bare 429s. The cluster must find the limit once for all shards, and stay near it.
"""

from __future__ import annotations

import heapq
import itertools
import math

import pytest

from distill.cluster.lease import ClusterLimit, LeaseBroker, Report

LIMIT = 50  # requests a second the server admits (3,000 RPM)
LATENCY = 0.2


class Cluster:
    """``shards`` shards with endless work under one broker, against a fixed-window server."""

    def __init__(self, shards: int, limit: ClusterLimit) -> None:
        self.now = 0.0
        self.broker = LeaseBroker(limit, lambda: self.now, lambda: self.now)
        self.reports = [Report() for _ in range(shards)]
        self.events: list[tuple[float, int, str, int]] = []
        self.order = itertools.count()
        self.admitted_in: dict[int, int] = {}
        self.sent = self.refused = 0
        self.accepted_at: list[float] = []
        for shard in range(shards):
            self.push(0.0, "ask", shard)

    def push(self, at: float, kind: str, shard: int) -> None:
        heapq.heappush(self.events, (at, next(self.order), kind, shard))

    def run(self, seconds: float) -> None:
        while self.events and self.events[0][0] < seconds:
            self.now, _, kind, shard = heapq.heappop(self.events)
            getattr(self, kind)(shard)

    def ask(self, shard: int) -> None:
        lease = self.broker.grant(1000, 0, self.reports[shard].take())
        step = lease.duration / lease.requests
        for i in range(lease.requests):
            self.push(self.now + lease.delay + i * step, "send", shard)
        self.push(self.now + lease.delay + lease.duration / 2, "ask", shard)  # the prefetch at half a lease

    def send(self, shard: int) -> None:
        report = self.reports[shard]
        report.sent += 1
        report.held_back += 1  # endless work: the rate holds every request back
        self.sent += 1
        window = math.floor(self.now)
        if self.admitted_in.get(window, 0) < LIMIT:
            self.admitted_in[window] = self.admitted_in.get(window, 0) + 1
            self.push(self.now + LATENCY, "answer", shard)
        else:
            self.push(self.now + 0.002, "refusal", shard)

    def answer(self, shard: int) -> None:
        self.reports[shard].accepted += 1
        self.reports[shard].latency += LATENCY
        self.accepted_at.append(self.now)

    def refusal(self, shard: int) -> None:
        self.refused += 1
        self.reports[shard].rate_limited += 1
        self.broker.report(self.reports[shard].take())  # a 429 goes to the broker at once


def test_four_shards_learn_an_unknown_limit_once_for_all_from_bare_429s():
    cluster = Cluster(4, ClusterLimit(lease_seconds=0.1))
    cluster.run(60.0)
    steady = sum(1 for t in cluster.accepted_at if 20.0 <= t < 60.0) / 40.0
    assert steady >= 0.85 * LIMIT  # near the limit, for the sum of the shards
    assert cluster.refused / cluster.sent < 0.05
    for report in cluster.reports:  # what the shards have not reported yet, as they do when they stop
        cluster.broker.report(report.take())
    state = cluster.broker.finish()
    assert state["source"] == "learned"
    assert 0.8 * LIMIT * 60 <= state["learned_rpm"] <= 1.05 * LIMIT * 60
    assert len(state["windows"]) >= 55  # one per second, for the run's cache
    assert state["reported_accepted"] == len(cluster.accepted_at)


def test_a_cluster_starts_from_a_stored_rate_and_never_goes_over_rpm():
    stored = Cluster(2, ClusterLimit(stored_rpm=LIMIT * 60, lease_seconds=0.1))
    assert stored.broker.state()["source"] == "stored"
    stored.run(5.0)
    assert sum(1 for t in stored.accepted_at if t < 5.0) >= 0.8 * LIMIT * 4.8  # no probing from 4/s
    capped = Cluster(2, ClusterLimit(rpm=LIMIT * 60 / 2, lease_seconds=0.1))
    capped.run(10.0)
    assert capped.refused == 0 and capped.broker.state()["rpm"] == pytest.approx(LIMIT * 30 * 0.985)
    assert max(capped.admitted_in.values()) <= LIMIT / 2 + 1
