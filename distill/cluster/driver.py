"""The driver of a cluster run: start the actors, sum their progress, stop them on a signal, merge their caches.

Called by :func:`distill.runner.run_async` in place of the engine when a job has ``cluster`` options, while the
driver holds the run's own ``--cache`` (so a second run of it refuses, as without Ray). When every shard is done
the shard caches are merged into that cache by ``distill merge``'s code, after this run's conversation rows there
are cleared (the shards hold the input as it is now), and the runner exports from it as it always does: the same
bytes as a run without Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..conversation import Reject
from ..cost import Budget
from ..errors import CacheError, DistillError, UsageError
from ..merge import merge
from ..stats import RunStats
from .lease import ClusterLimit
from .options import LOCAL, ClusterOptions
from .records import add_spending, keep_rate, rate_of, shard_spending, stored_rate
from .work import RECOUNTED, SENT, ShardResult, ShardSpec, added

# A distill.runner.RunJob (not imported: the runner imports this module)
RunJob = Any

POLL_SECONDS = 0.25
REPORT_NAME = "cluster-report.json"
STOP_SECONDS = 30.0


class ClusterError(DistillError):
    """The cluster could not be reached, or a shard failed for good."""


@dataclass(slots=True)
class ClusterReport:
    """What the driver saw: each shard's node and pid, restarts, and the leases' round trips."""

    nodes: list[str] = field(default_factory=list)
    restarts: int = 0
    leases: int = 0
    lease_ask_seconds: list[float] = field(default_factory=list)
    acquired: int = 0
    stalled: int = 0
    stalled_seconds: float = 0.0
    limiter: dict = field(default_factory=dict)

    def write(self, path: Path) -> None:
        """``CACHE_DIR/cluster-report.json``: the last cluster run's nodes, restarts and lease round trips."""
        asks = sorted(self.lease_ask_seconds)
        summary = {
            "nodes": self.nodes,
            "restarts": self.restarts,
            "leases": self.leases,
            "lease_ask_ms": {
                "median": round(1000 * asks[len(asks) // 2], 3) if asks else None,
                "p99": round(1000 * asks[int(len(asks) * 0.99)], 3) if asks else None,
                "samples": len(asks),
            },
            "requests_paced": self.acquired,
            "requests_that_waited_for_a_lease": self.stalled,
            "seconds_waited_for_leases": round(self.stalled_seconds, 3),
            "limiter": self.limiter,
        }
        path.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))


def specs_for(job: RunJob, run_id: str, input_path: str) -> list[ShardSpec]:
    options = job.cluster
    assert options is not None
    return [
        ShardSpec(
            index=i,
            count=options.shards,
            input=job.input.resolve(),
            input_path=input_path,
            run_id=run_id,
            cache=options.shard_cache(job.cache, i),
            settings=job.settings,
            output_format=job.output_format,
            input_format=job.input_format,
            reader_options=dict(job.reader_options),
            limit=job.limit,
            api_key=job.api_key,
            price=job.price,
        )
        for i in range(1, options.shards + 1)
    ]


def check_job(job: RunJob) -> None:
    """Refuse, before Ray starts, what a cluster run does not do."""
    for given, flag in ((job.shard, "--shard"), (job.batch, "--batch")):
        if given is not None:
            raise UsageError(f"{flag} cannot be combined with --ray; drop one of them")


@contextlib.contextmanager
def connected(options: ClusterOptions) -> Iterator[None]:
    """Ray for this run: the instance already initialised in this process, a new local one, or a cluster."""
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'distill[ray]'") from None
    if ray.is_initialized():
        yield
        return
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if options.address == LOCAL:
            # "local": a new instance even where `ray start` left the address of its cluster in /tmp/ray
            ray.init(address=LOCAL, num_cpus=options.num_cpus, namespace=None, **quiet)
        else:  # "auto": the cluster `ray start` started on this machine (RAY_ADDRESS first), else an error
            ray.init(address=options.address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ClusterError(
            f"cannot reach the Ray cluster at --ray {options.address}: {e}; start it with 'ray start --head' "
            "on the head node, or pass --ray local. A cluster with token authentication (what 'ray start' sets "
            "up since Ray 2.59) needs RAY_AUTH_MODE=token here too, and its token in ~/.ray/auth_token or "
            "RAY_AUTH_TOKEN"
        ) from None
    try:
        yield
    finally:
        ray.shutdown()


async def answer_on_cluster(
    job: RunJob,
    run_id: str,
    input_path: str,
    stats: RunStats,
    on_reject: Callable[[Reject], None],
    reader_stats: dict | None,
    budget: Budget | None = None,
) -> ClusterReport:
    """Answer ``job`` on Ray, merge the shard caches into ``job.cache`` and report the rejects in input order.

    ``budget``: the run's (a cap, or a meter): under a cap the broker holds it for every shard
    (:mod:`distill.cluster.budget`); it ends with what the shards spent and refused, as a single run's would.
    """
    check_job(job)
    options = job.cluster
    assert options is not None
    specs = specs_for(job, run_id, input_path)
    for spec in specs:
        if spec.cache.resolve() == job.cache.resolve():
            raise UsageError("--cache-dir must not hold the run's own --cache file")
    settings = job.settings
    limit = ClusterLimit(
        settings.rpm,
        settings.tpm,
        options.lease_seconds,
        stored_rate(job.cache, settings.base_url, settings.model),
        budget_usd=budget.limit if budget is not None else None,
        spent_before_usd=budget.spent_before if budget is not None else 0.0,
    )
    report = ClusterReport()
    caches = [s.cache for s in specs]
    spent_before = shard_spending(caches, run_id)
    try:
        with connected(options):
            results, carried = await _run_shards(specs, limit, run_id, stats, report)
    finally:  # stopped or not, what the shards paid for is counted against --budget next time
        add_spending(job.cache, run_id, spent_before, shard_spending(caches, run_id))
    _check_markers(specs, results)
    _merge_shards(job.cache, run_id, caches)
    keep_rate(job.cache, run_id, settings.base_url, settings.model, report.limiter)
    _sum_final(stats, results, carried)
    if budget is not None:
        budget.spent = stats.cost_usd or 0.0
        budget.refused += sum(r.budget_refused for r in results)
    for _, reject in heapq.merge(*(r.rejects for r in results), key=lambda pair: pair[0]):
        on_reject(reject)
    if reader_stats is not None and results[0].reader_stats:
        reader_stats.update(results[0].reader_stats)  # every shard read the whole input
    report.nodes = [r.node for r in results]
    report.write(options.shard_dir(job.cache) / REPORT_NAME)
    return report


async def _run_shards(
    specs: list[ShardSpec], limit: ClusterLimit, run_id: str, stats: RunStats, report: ClusterReport
) -> tuple[list[ShardResult], list[dict[str, Any]]]:
    """Run every shard to its end; the results and what restarted shards had sent before they died."""
    import ray

    from .actors import NAMESPACE, LimiterActor, ShardActor

    name = f"distill-limiter-{run_id}"
    try:
        limiter = LimiterActor.options(name=name, namespace=NAMESPACE).remote(limit)
    except ValueError:
        raise ClusterError(
            f"another distill run of this input and settings is running on this Ray cluster ({name})"
        ) from None
    shards = [
        ShardActor.options(
            name=shard_actor_name(run_id, spec.index), namespace=NAMESPACE, scheduling_strategy="SPREAD"
        ).remote(spec, limit, name)
        for spec in specs
    ]
    runs = [shard.run.remote() for shard in shards]
    follower = _Follower(shards, limiter, stats, report)
    try:
        watching = asyncio.ensure_future(follower.follow())
        try:
            results = await asyncio.gather(*(asyncio.wrap_future(ref.future()) for ref in runs))
        finally:
            watching.cancel()
        await follower.poll()
        report.limiter = await asyncio.wrap_future(limiter.finish.remote().future())
        rate_of(stats, report.limiter)
        return list(results), follower.carried_counts()
    except asyncio.CancelledError:
        await _stop(shards)
        raise
    except ray.exceptions.RayError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, DistillError):  # a shard's own error (a 401, a damaged cache): the same message
            raise cause from None
        raise ClusterError(f"a shard failed: {str(e).strip().splitlines()[-1]}") from None
    finally:
        for actor in [*shards, limiter]:
            ray.kill(actor, no_restart=True)


def shard_actor_name(run_id: str, index: int) -> str:
    """Shard actors are named (``ray list actors`` shows them): ``distill-shard-RUN-I`` in ``distill``."""
    return f"distill-shard-{run_id}-{index}"


async def _stop(shards: list) -> None:
    """Ask every shard to stop (each commits what it has and closes its cache) and wait a while for them."""
    stopping = [asyncio.wrap_future(shard.stop.remote().future()) for shard in shards]
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.gather(*stopping, return_exceptions=True), STOP_SECONDS)


class _Follower:
    """Polls every shard's counters and keeps ``stats`` at their sum (the progress line reads it)."""

    def __init__(self, shards: list, limiter, stats: RunStats, report: ClusterReport) -> None:
        self.shards = shards
        self.limiter = limiter
        self.stats = stats
        self.report = report
        self.latest: list[tuple[str, dict[str, Any]] | None] = [None] * len(shards)
        self.before_restart: list[list[dict[str, Any]]] = [
            [] for _ in shards
        ]  # dead incarnations' last counts
        self.leases: dict[int, dict] = {}

    async def follow(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            await self.poll()

    async def poll(self) -> None:
        calls = [asyncio.wrap_future(shard.progress.remote().future()) for shard in self.shards]
        *answers, limiter = await asyncio.gather(
            *calls, asyncio.wrap_future(self.limiter.state.remote().future()), return_exceptions=True
        )
        if not isinstance(limiter, BaseException):
            rate_of(self.stats, limiter)
        for i, answer in enumerate(answers):
            if isinstance(answer, BaseException):
                continue  # a shard being restarted answers again soon; its run's end is what counts
            incarnation, counts, leases = answer
            previous = self.latest[i]
            if previous is not None and previous[0] != incarnation:
                self.report.restarts += 1
                self.before_restart[i].append(previous[1])
            self.latest[i] = (incarnation, counts)
            if leases:
                self.leases[i] = leases
        latest = [counts for _, counts in filter(None, self.latest)]
        _set_sums(self.stats, latest, self.carried_counts())
        shards = self.leases.values()
        self.report.leases = sum(s["leases"] for s in shards)
        self.report.lease_ask_seconds = [t for s in shards for t in s["ask_seconds"]]
        self.report.acquired = sum(s["acquired"] for s in shards)
        self.report.stalled = sum(s["stalled"] for s in shards)
        self.report.stalled_seconds = sum(s["stalled_seconds"] for s in shards)

    def carried_counts(self) -> list[dict[str, Any]]:
        """What the shards' dead incarnations had sent, as last polled."""
        return [counts for dead in self.before_restart for counts in dead]


def _set_sums(stats: RunStats, latest: list[dict[str, Any]], carried: list[dict[str, Any]]) -> None:
    """``stats`` as the sum over shards: progress from each shard's latest incarnation, work from all of them."""
    for name in RECOUNTED:
        setattr(stats, name, added([counts.get(name) for counts in latest]))
    for name in SENT:
        setattr(stats, name, added([counts.get(name) for counts in (*latest, *carried)]))


def _sum_final(stats: RunStats, results: list[ShardResult], carried: list[dict[str, Any]]) -> None:
    """The final counters: each shard's last incarnation, plus what dead incarnations had sent."""
    _set_sums(stats, [r.stats for r in results], carried)
    stats.failures = [failure for r in results for failure in r.failures]


def _check_markers(specs: list[ShardSpec], results: list[ShardResult]) -> None:
    """Every shard's cache must be the file the driver sees: --cache-dir is shared storage on a cluster."""
    for spec, result in zip(specs, results, strict=True):
        try:
            seen = spec.marker.read_text()
        except OSError:
            seen = None
        if seen != result.marker:
            raise CacheError(
                f"shard {spec.index} wrote its cache {spec.cache} on {result.node}, but this machine does not see "
                "it there: on a cluster, --cache-dir must be a directory every node and the driver share (NFS, "
                "a cluster file system) at the same path. The shard caches are kept on their nodes; copy them "
                "here and run 'distill merge', or rerun with a shared --cache-dir"
            )


def _merge_shards(cache: Path, run_id: str, shard_caches: list[Path]) -> None:
    """Merge the shard caches into ``cache`` (held open, locked, by the runner) with this run's rows replaced."""
    with contextlib.closing(sqlite3.connect(cache, isolation_level=None)) as conn:
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("DELETE FROM conversations WHERE run_id = ?", (run_id,))
        # this run's row first, so the merge keeps its id even if another run read a file of the same name
        conn.execute("ATTACH DATABASE ? AS shard", (str(shard_caches[0]),))
        try:
            conn.execute(
                "INSERT OR IGNORE INTO runs (id, input, settings, created, updated) "
                "SELECT id, input, settings, created, updated FROM shard.runs WHERE id = ?",
                (run_id,),
            )
        finally:
            conn.execute("DETACH DATABASE shard")
    merge(cache, shard_caches, output_locked=True, spending=False)  # records.add_spending counts it
