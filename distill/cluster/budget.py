"""A cluster-wide ``--budget``: the broker holds the spend, and lends each shard short allowances of it.

The same rule as a run without Ray (:class:`distill.cost.Budget`): a request goes out only if its estimated cost,
with everything spent on these settings before (``--budget-scope total``, from the run's cache) and everything
spent or held in the cluster, fits in the budget; once one does not, no new request goes out and the run stops
with exit code 75, everything answered saved. What changes is where the spend is counted: one process cannot see
the others' reservations, so the broker (:class:`BudgetBroker`, in the limiter actor) lends each shard an
**allowance** a few requests' worth at a time, and counts against the budget, for each shard, the larger of what
it was lent and what it reports spent. A shard (:class:`SharedBudget`) reserves each request against its
allowance, asks for more when it runs short (one actor call per :data:`ALLOWANCE_REQUESTS` requests, not per
request) and, when the broker says the budget has no room left, refuses every further request as a run without
Ray would. When a shard stops, its unused allowance goes back.

So the cluster stops at most a few requests' estimated cost before the budget (the allowances other shards still
hold), never over it by more than a single run would be (the estimate's error).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ..cost import Budget, BudgetReached, Price
from ..requests import TeacherRequest

ALLOWANCE_REQUESTS = 8  # an allowance is this many requests' estimated cost (when the budget has room)

# (holder, wanted, needed, spent) -> (lent in all, reached): the actor call a shard makes
AskAllowance = Callable[[str, float, float, float], Awaitable[tuple[float, bool]]]
GiveBack = Callable[[str, float], Awaitable[None]]  # (holder, spent in all): a shard stops


class BudgetBroker:
    """The cluster's spend against ``limit`` (US dollars), ``spent_before`` included; one per run."""

    def __init__(self, limit: float, spent_before: float = 0.0) -> None:
        self.limit = limit
        self.spent_before = spent_before
        self._holders: dict[str, list[float]] = {}  # holder -> [lent in all, spent in all]
        self.reached = False

    def committed(self) -> float:
        """What counts against the budget now: before, and each holder's larger of lent and spent."""
        return self.spent_before + sum(max(lent, spent) for lent, spent in self._holders.values())

    @property
    def spent(self) -> float:
        return sum(spent for _, spent in self._holders.values())

    def allow(self, holder: str, wanted: float, needed: float, spent: float) -> tuple[float, bool]:
        """Lend ``holder`` up to ``wanted`` more (none unless ``needed`` fits); returns what it was lent in all
        (counting what it spent over its allowance as lent) and whether the budget is reached."""
        entry = self._holders.setdefault(holder, [0.0, 0.0])
        entry[1] = max(entry[1], spent)
        entry[0] = max(entry[0], entry[1])
        room = self.limit - self.committed()
        if room + 1e-12 < needed:
            self.reached = True
            return entry[0], True
        entry[0] += min(max(wanted, needed), room)
        return entry[0], False

    def give_back(self, holder: str, spent: float) -> None:
        """``holder`` stopped having spent ``spent`` in all: what it was lent beyond that is free again."""
        entry = self._holders.setdefault(holder, [0.0, 0.0])
        entry[1] = max(entry[1], spent)
        entry[0] = entry[1]

    def state(self) -> dict:
        return {
            "budget_usd": self.limit,
            "spent_before_usd": self.spent_before,
            "spent_usd": self.spent,
            "budget_reached": self.reached,
        }


class SharedBudget(Budget):
    """A shard's :class:`~distill.cost.Budget` under a cluster-wide ``--budget`` (see the module docstring).

    ``make_room`` (awaited before a request reserves) asks the broker through ``ask`` until the request fits in
    the allowance, or the broker says the budget is reached; ``reserve`` then refuses what does not fit.
    """

    def __init__(
        self,
        limit: float,
        price: Price,
        holder: str,
        ask: AskAllowance,
        give_back: GiveBack,
        *,
        on_charge: Callable[[float, int, int], None] | None = None,
    ) -> None:
        super().__init__(limit, price, on_charge=on_charge)
        self.holder = holder
        self._ask = ask
        self._give_back = give_back
        self.lent = 0.0
        self.exhausted = False
        self._asking: asyncio.Future[None] | None = None
        self._estimated: tuple[TeacherRequest, int, float] | None = None

    def estimate(self, request: TeacherRequest, output_tokens: int) -> float:
        """As :meth:`Budget.estimate`, counted once for ``make_room`` and ``reserving`` of the same request."""
        last = self._estimated
        if last is not None and last[0] is request and last[1] == output_tokens:
            return last[2]
        amount = super().estimate(request, output_tokens)
        self._estimated = (request, output_tokens, amount)
        return amount

    def _fits(self, amount: float) -> bool:
        return self.spent + self.reserved + amount <= self.lent + 1e-12

    async def make_room(self, request: TeacherRequest, output_tokens: int) -> None:
        """Wait until the allowance holds ``request``'s estimated cost, or the budget is reached."""
        amount = self.estimate(request, output_tokens)
        while not self._fits(amount) and not self.exhausted:
            if self._asking is None:
                self._asking = asyncio.ensure_future(self._ask_for(amount))
            await asyncio.shield(self._asking)

    async def _ask_for(self, amount: float) -> None:
        try:
            needed = self.spent + self.reserved + amount - self.lent
            lent, reached = await self._ask(self.holder, amount * ALLOWANCE_REQUESTS, needed, self.spent)
            self.lent = max(self.lent, lent)
            self.exhausted = reached
        finally:
            self._asking = None

    def reserve(self, amount: float) -> None:
        if not self._fits(amount):
            self.refused += 1
            raise BudgetReached(f"{self.summary()}; the cluster's budget has no room for the next request")
        self.reserved += amount

    async def close(self) -> None:
        """The shard stops: what it was lent and did not spend goes back to the broker."""
        await self._give_back(self.holder, self.spent)
