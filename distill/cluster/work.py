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

from ..cache import Cache
from ..client import TeacherClient
from ..conversation import Record, Reject, limited
from ..engine import Engine
from ..settings import RunSettings
from ..shard import OpeningShard
from ..stats import RunStats

# Counters a restarted shard counts again from its cache (progress); every other number of RunStats is work done
# once (requests sent, tokens, cost: whatever counters the engine grows), which a restart does not undo.
RECOUNTED = ("conversations_read", "conversations_done", "conversations_failed", "rejects", "turns_done",
             "cache_hits")  # fmt: skip
NOT_SUMMED = ("total_expected", "started")
SENT = tuple(
    f.name for f in fields(RunStats)
    if f.name not in (*RECOUNTED, *NOT_SUMMED) and f.type in ("int", "float", int, float)
)  # fmt: skip


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
    input_format: str | None = None
    reader_options: dict = field(default_factory=dict)
    limit: int | None = None
    api_key: str | None = None

    @property
    def shard(self) -> OpeningShard:
        return OpeningShard(self.index, self.count)

    @property
    def marker(self) -> Path:
        """A file the shard writes beside its cache, so the driver can tell whether it sees the same storage."""
        return self.cache.with_name(self.cache.name + ".node")


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


def counters(stats: RunStats) -> dict[str, int]:
    """The counters a driver sums over shards."""
    return {name: getattr(stats, name) for name in (*RECOUNTED, *SENT)}


def write_marker(spec: ShardSpec) -> str:
    """Write a fresh token beside the shard's cache and return it (the driver reads it back)."""
    token = f"{socket.gethostname()} {os.getpid()} {secrets.token_hex(8)}"
    spec.cache.parent.mkdir(parents=True, exist_ok=True)
    partial = spec.marker.with_name(spec.marker.name + ".partial")
    partial.write_text(token)
    partial.replace(spec.marker)
    return token


async def answer_shard(spec: ShardSpec, limiter, stats: RunStats) -> ShardResult:
    """Answer shard ``spec`` into its cache through ``limiter``; counters go into ``stats`` as they change."""
    from formats.readers import ReaderOptions, open_reader

    marker = write_marker(spec)
    reader = open_reader(
        spec.input,
        spec.input_format,
        ReaderOptions(system_prompt=spec.settings.system_prompt, extra=dict(spec.reader_options)),
    )
    rejects: list[tuple[int, Reject]] = []
    numbered = _Numbered(reader.read(spec.input))
    async with Cache(spec.cache) as cache, TeacherClient.for_settings(spec.settings, spec.api_key) as client:
        engine = Engine(
            spec.settings,
            cache,
            client,
            limiter=limiter,
            stats=stats,
            on_reject=lambda reject: rejects.append((numbered.current, reject)),
            shard=spec.shard,
        )
        await engine.run(limited(iter(numbered), spec.limit), spec.run_id, spec.input_path)
    return ShardResult(
        index=spec.index,
        stats=counters(stats),
        failures=list(stats.failures),
        rejects=rejects,
        reader_stats=getattr(reader, "stats", None),
        marker=marker,
        node=socket.gethostname(),
        pid=os.getpid(),
    )


class _Numbered(Iterable[Record]):
    """Records with the number of the last one handed out (the engine reports a reject as it reads it)."""

    def __init__(self, records: Iterator[Record]) -> None:
        self._records = records
        self.current = -1

    def __iter__(self) -> Iterator[Record]:
        for number, record in enumerate(self._records):
            self.current = number
            yield record
