"""The Ray actors of a cluster run: one named limiter, and one shard actor per ``--shard I/N``.

A shard actor is restartable: if its process dies, Ray starts it again (``max_restarts``) and retries the
``run`` call on the new process (``max_task_retries``), which resumes from the shard's cache. Imported only when
a cluster run starts (it imports Ray).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid

import ray

from ..stats import RunStats
from .lease import ClusterLimit, Lease, LeaseBroker, Report
from .leased import LeasedLimiter
from .work import Lender, ShardResult, ShardSpec, answer_shard, counters

NAMESPACE = "distill"
SHARD_RESTARTS = 8


@ray.remote(num_cpus=0, max_restarts=SHARD_RESTARTS, max_task_retries=SHARD_RESTARTS)
class LimiterActor:
    """The cluster's one rate limit (a :class:`LeaseBroker`), named ``distill-limiter-RUN`` in ``distill``.

    Restarted if its process dies, with a fresh timeline and controller (from the rate an earlier run stored):
    the shards' asks are retried on the new one.
    """

    def __init__(self, limit: ClusterLimit) -> None:
        self.broker = LeaseBroker(limit, time.monotonic, time.time)

    def grant(self, requests: int, tokens: int, report: Report) -> Lease:
        return self.broker.grant(requests, tokens, report)

    def report(self, report: Report) -> Lease:
        return self.broker.report(report)

    def allow(self, holder: str, wanted: float, needed: float, spent: float) -> tuple[float, bool]:
        assert self.broker.budget is not None
        return self.broker.budget.allow(holder, wanted, needed, spent)

    def give_back(self, holder: str, spent: float) -> None:
        assert self.broker.budget is not None
        self.broker.budget.give_back(holder, spent)

    def state(self) -> dict:
        return self.broker.state()

    def finish(self) -> dict:
        return self.broker.finish()


@ray.remote(num_cpus=0, max_restarts=SHARD_RESTARTS, max_task_retries=SHARD_RESTARTS)
class ShardActor:
    """Runs :func:`answer_shard` for one shard; ``progress`` may be called while ``run`` goes."""

    def __init__(self, spec: ShardSpec, limit: ClusterLimit, limiter_name: str) -> None:
        self.spec = spec
        self.limit = limit
        self.limiter_name = limiter_name  # looked up by name: a restarted shard finds the same limiter
        self.incarnation = uuid.uuid4().hex  # a new one after every restart
        self.stats = RunStats()
        self.leased: LeasedLimiter | None = None
        self._task: asyncio.Task[ShardResult] | None = None

    async def run(self) -> ShardResult:
        actor = ray.get_actor(self.limiter_name, namespace=NAMESPACE)

        async def ask(requests: int, tokens: int, report: Report) -> Lease:
            return await actor.grant.remote(requests, tokens, report)

        async def send_report(report: Report) -> Lease:
            return await actor.report.remote(report)

        async def allow(holder: str, wanted: float, needed: float, spent: float) -> tuple[float, bool]:
            return await actor.allow.remote(holder, wanted, needed, spent)

        async def give_back(holder: str, spent: float) -> None:
            await actor.give_back.remote(holder, spent)

        limiter = self.leased = LeasedLimiter(self.limit, ask, send_report)
        budget = self.limit.budget_usd
        lender = Lender(budget, self.incarnation, allow, give_back) if budget else None
        self._task = asyncio.ensure_future(answer_shard(self.spec, limiter, self.stats, lender))
        try:
            return await self._task
        finally:
            if self.leased is not None:
                await self.leased.close()

    async def stop(self) -> bool:
        """Cancel the run: the engine commits what was answered and closes the cache."""
        if self._task is None or self._task.done():
            return False
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task  # its cancellation (or error) is what run() reports
        return True

    async def progress(self) -> tuple[str, dict[str, int], dict]:
        """(incarnation, counters, lease figures): the driver sums these over shards."""
        leases = {}
        if self.leased is not None:
            stats = self.leased.stats
            leases = {
                "leases": stats.leases,
                "ask_seconds": list(stats.ask_seconds[-1000:]),
                "acquired": stats.acquired,
                "stalled": stats.stalled,
                "stalled_seconds": stats.stalled_seconds,
            }
        return self.incarnation, counters(self.stats), leases

    def pid(self) -> int:
        return os.getpid()
