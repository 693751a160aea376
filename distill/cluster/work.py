"""What one shard does, without Ray: the ordinary engine over its share of the input into its own cache.

The shard reads the whole input (as ``--shard`` does), answers the conversations that fall in its shard (by how
they open, :class:`~distill.shard.OpeningShard`, so identical requests meet in one shard and are sent once),
and keeps the rejects it owns with their record number, so the driver can write them in input order. Its cache is
the only file it writes; a rerun (or Ray's restart of a dead shard) resumes from it like any ``distill run``.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..cache import Cache
from ..client import TeacherClient
from ..conversation import Record, Reject, limited
from ..cost import Budget, Price, budget_for
from ..engine import Engine
from ..settings import RunSettings
from ..shard import OpeningShard
from ..stats import RunStats
from .budget import AskAllowance, GiveBack, SharedBudget

# Counters a restarted shard counts again from its cache (progress), as opposed to work done once (requests sent,
# tokens, money, waits: every other number or count of RunStats), which a restart does not undo.
RECOUNTED = ("conversations_read", "conversations_done", "conversations_failed", "rejects", "turns_done",
             "cache_hits", "conversations_cached")  # fmt: skip
# the rate and its source are the broker's (the driver reads them there), not a shard's
NOT_SUMMED = (
    "total_expected",
    "started",
    "failures",
    "cost_before_usd",
    "budget_usd",
    "rate_source",
    "learned_rpm",
)
SENT = tuple(f.name for f in fields(RunStats) if f.name not in (*RECOUNTED, *NOT_SUMMED))


@dataclass(slots=True)
class ShardSpec:
    """Everything a shard actor needs; paths are absolute (actors do not share the driver's directory)."""

    index: int
    count: int
    input: Path
    input_path: str  # the driver's resolved input path, which names the run in every cache
    run_id: str
    cache: Path
    settings: RunSettings
    output_format: str = "messages"  # its writer refuses conversations it cannot hold, as they are read
    input_format: str | None = None
    reader_options: dict = field(default_factory=dict)
    limit: int | None = None
    api_key: str | None = None
    price: Price | None = None  # meters what the shard's answers cost (and a cluster-wide --budget caps it)

    @property
    def shard(self) -> OpeningShard:
        return OpeningShard(self.index, self.count)

    @property
    def marker(self) -> Path:
        """A file the shard writes beside its cache, so the driver can tell whether it sees the same storage."""
        return self.cache.with_name(self.cache.name + ".node")


@dataclass(frozen=True, slots=True)
class Lender:
    """Where a shard's share of a cluster-wide ``--budget`` of ``limit_usd`` comes from: the limiter actor."""

    limit_usd: float
    holder: str  # the shard's incarnation: a restarted shard is a new holder
    allow: AskAllowance
    give_back: GiveBack


@dataclass(slots=True)
class ShardResult:
    index: int
    stats: dict
    failures: list[tuple[str, str, str]]
    rejects: list[tuple[int, Reject]]
    reader_stats: dict | None
    marker: str
    node: str
    pid: int
    budget_refused: int = 0  # requests the cluster-wide --budget had no room for


def counters(stats: RunStats) -> dict[str, Any]:
    """The counters a driver sums over shards (numbers, None where unknown, and counts by name)."""
    return {name: getattr(stats, name) for name in (*RECOUNTED, *SENT) if hasattr(stats, name)}


def added(values: list[Any]) -> Any:
    """The sum of one counter over shards: numbers add, None where no shard knows it, dicts add per key."""
    known = [v for v in values if v is not None]
    if not known:
        return None
    if isinstance(known[0], dict):
        total: dict = {}
        for value in known:
            for key, n in value.items():
                total[key] = total.get(key, 0) + n
        return total
    return sum(known)


def write_marker(spec: ShardSpec) -> str:
    """Write a fresh token beside the shard's cache and return it (the driver reads it back)."""
    token = f"{socket.gethostname()} {os.getpid()} {secrets.token_hex(8)}"
    spec.cache.parent.mkdir(parents=True, exist_ok=True)
    partial = spec.marker.with_name(spec.marker.name + ".partial")
    partial.write_text(token)
    partial.replace(spec.marker)
    return token


async def answer_shard(
    spec: ShardSpec, limiter, stats: RunStats, lender: Lender | None = None
) -> ShardResult:
    """Answer shard ``spec`` into its cache through ``limiter`` (and under ``lender``'s ``--budget``); counters go
    into ``stats`` as they change."""
    from formats.intake import screened
    from formats.readers import ReaderOptions, open_reader
    from formats.writers import open_writer

    marker = write_marker(spec)
    reader = open_reader(
        spec.input,
        spec.input_format,
        ReaderOptions(system_prompt=spec.settings.system_prompt, extra=dict(spec.reader_options)),
    )
    rejects: list[tuple[int, Reject]] = []
    writer = open_writer(spec.output_format)
    numbered = _Numbered(screened(limited(reader.read(spec.input), spec.limit), writer))
    async with Cache(spec.cache) as cache, TeacherClient.for_settings(spec.settings, spec.api_key) as client:
        budget = _meter(spec, stats, cache, limiter, lender)
        engine = Engine(
            spec.settings,
            cache,
            client,
            limiter=limiter,
            stats=stats,
            on_reject=lambda reject: rejects.append((numbered.current, reject)),
            budget=budget,
            shard=spec.shard,
        )
        if limiter is not None:
            limiter.follow(engine.watch)
        try:
            await engine.run(iter(numbered), spec.run_id, spec.input_path)
        finally:
            if isinstance(budget, SharedBudget):
                await budget.close()
    return ShardResult(
        index=spec.index,
        stats=counters(stats),
        failures=list(stats.failures),
        rejects=rejects,
        reader_stats=getattr(reader, "stats", None),
        marker=marker,
        node=socket.gethostname(),
        pid=os.getpid(),
        budget_refused=budget.refused if budget is not None else 0,
    )


def _meter(spec: ShardSpec, stats: RunStats, cache: Cache, limiter, lender: Lender | None) -> Budget | None:
    """What the answers cost (where the price is known): into ``stats.cost_usd``, the shard cache's spending and
    the reports to the broker; a :class:`SharedBudget` of ``lender``'s ``--budget`` when there is one."""

    def on_charge(usd: float, prompt_tokens: int, completion_tokens: int) -> None:
        stats.cost_usd = (stats.cost_usd or 0.0) + usd
        cache.add_spend(spec.run_id, usd, prompt_tokens, completion_tokens)
        if limiter is not None:
            limiter.on_spent(usd)

    if lender is not None and spec.price is not None:
        meter: Budget | None = SharedBudget(
            lender.limit_usd, spec.price, lender.holder, lender.allow, lender.give_back, on_charge=on_charge
        )
    else:
        meter = budget_for(None, spec.settings.model, spec.price, on_charge=on_charge)
    if meter is not None:
        stats.cost_usd = 0.0
    return meter


class _Numbered(Iterable[Record]):
    """Records with the number of the last one handed out (the engine reports a reject as it reads it)."""

    def __init__(self, records: Iterator[Record]) -> None:
        self._records = records
        self.current = -1

    def __iter__(self) -> Iterator[Record]:
        for number, record in enumerate(self._records):
            self.current = number
            yield record
