"""Issue 14: a cluster-wide ``--budget`` (distill.cluster.budget): the broker lends allowances, shards reserve.

No Ray: shard budgets ask one broker through a coroutine, as through an actor call.
"""

from __future__ import annotations

import asyncio

import pytest

from distill.cluster.budget import ALLOWANCE_REQUESTS, BudgetBroker, SharedBudget
from distill.cost import BudgetReached, Price
from distill.requests import TeacherRequest

PRICE = Price(1_000_000.0, 1_000_000.0)  # a dollar a token: costs are token counts
OUTPUT = 10


def request(n: int) -> TeacherRequest:
    return TeacherRequest("completions", "m", (), prompt=f"question {n}")


def shards_on(broker: BudgetBroker, count: int) -> tuple[list[SharedBudget], list[str]]:
    calls: list[str] = []

    async def allow(holder: str, wanted: float, needed: float, spent: float) -> tuple[float, bool]:
        calls.append(holder)
        await asyncio.sleep(0)
        return broker.allow(holder, wanted, needed, spent)

    async def give_back(holder: str, spent: float) -> None:
        broker.give_back(holder, spent)

    return [SharedBudget(broker.limit, PRICE, f"shard-{i}", allow, give_back) for i in range(count)], calls


async def send(budget: SharedBudget, n: int, actual_tokens: int) -> bool:
    """One request through the shard's budget as the sender does it: room, reservation, charge."""
    req = request(n)
    await budget.make_room(req, OUTPUT)
    try:
        with budget.reserving(req, OUTPUT):
            budget.charge(0, actual_tokens)
    except BudgetReached:
        return False
    return True


async def test_the_cluster_spends_up_to_the_budget_and_every_shard_stops():
    one = SharedBudget(1.0, PRICE, "x", None, None)  # type: ignore[arg-type]
    cost = one.estimate(request(0), OUTPUT)  # about 13 "dollars" a request
    broker = BudgetBroker(limit=40 * cost, spent_before=10 * cost)  # room for 30 requests
    shards, calls = shards_on(broker, 3)
    sent = await asyncio.gather(*(send(shards[i % 3], i, int(cost)) for i in range(60)))
    # never over; short at most by what the other shards still hold
    assert 30 - 3 * ALLOWANCE_REQUESTS <= sum(sent) <= 30
    assert broker.committed() <= broker.limit + 1e-9 and broker.reached
    assert all(s.exhausted for s in shards) and sum(s.refused for s in shards) == 60 - sum(sent)
    assert len(calls) < 30  # allowances of several requests: not one call per request
    for shard in shards:
        await shard.close()
    assert broker.committed() == pytest.approx(broker.spent_before + sum(s.spent for s in shards))


async def test_an_answer_dearer_than_its_estimate_counts_in_full():
    broker = BudgetBroker(limit=910.0)
    (shard,), _ = shards_on(broker, 1)
    assert await send(shard, 0, 900)  # the estimate was a few tokens; the answer cost 900
    assert not await send(shard, 1, 5) and shard.refused == 1  # 10 left: the next estimate does not fit
    assert broker.committed() == 900.0 and broker.reached
