"""The whole of ``distill run`` as one Python call: read, answer through the engine, export, check, report.

    from distill.runner import RunJob, run
    report = run(RunJob(input=Path("sharegpt.json"), output=Path("out.jsonl"), cache=Path("cache.sqlite"),
                        settings=RunSettings(model="m", base_url="http://127.0.0.1:8000/v1")))

Nothing is paid for before the input, the cache and the output path have been checked. SIGINT and SIGTERM stop
the run: what was answered is committed, and the same command resumes it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from formats.intake import check_not_blank, format_hint, screened
from formats.reading_process import read_in_a_process
from formats.rejects import RejectsWriter, rejects_path_for

from .cache import Cache, check_file
from .client import TeacherClient
from .conversation import Reject, limited
from .cost import BUDGET_SCOPES, Budget, BudgetReached, Price, budget_for
from .engine import Engine
from .errors import DistillError, UsageError
from .estimate import estimate_records
from .export import ExportResult, export
from .manifest import manifest_path, write_manifest
from .preflight import CheckedClient, check_key, preflight
from .progress import RunObserver
from .rejected import DEFAULT_MAX_REJECT_SHARE, RejectTally, check_max_share, judge
from .settings import RunSettings
from .shard import Shard
from .stats import RunStats

if TYPE_CHECKING:
    from .batch import BatchOptions
    from .cluster import ClusterOptions


class Interrupted(DistillError):
    """The run was stopped by a signal; everything answered so far is in the cache. ``stats`` says how far it got."""

    exit_code = 130

    def __init__(self, message: str, stats: RunStats | None = None) -> None:
        super().__init__(message)
        self.stats = stats


@dataclass(slots=True)
class RunJob:
    input: Path
    output: Path
    cache: Path
    settings: RunSettings
    output_format: str = "messages"
    input_format: str | None = None
    reader_options: dict = field(default_factory=dict)
    limit: int | None = None
    api_key: str | None = None
    api_key_env: str = "TOGETHER_API_KEY"  # named in the messages about the key
    check_output: bool = True
    val_fraction: float = 0.0
    shard: Shard | None = None
    budget: float | None = None
    budget_scope: str = "total"  # "total": everything spent on the cache for these settings; "run": this call
    price: Price | None = None
    batch: BatchOptions | None = None
    cluster: ClusterOptions | None = None  # --ray/--shards: answered by shards on Ray (distill.cluster)
    max_reject_share: float = DEFAULT_MAX_REJECT_SHARE
    preflight: bool = True  # ask GET BASE/models before the first request


@dataclass(slots=True)
class RunReport:
    run_id: str
    stats: RunStats
    export: ExportResult
    manifest: Path
    rejects: Path | None
    input: Path | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.export.failed or self.stats.conversations_failed else 0


def check_writable(path: Path, what: str, flag: str) -> None:
    """Fail now, before any request is paid for, if ``path`` cannot be written."""
    directory = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UsageError(f"{what} {path} is a directory; pass a file path to {flag}")
    if not directory.is_dir():
        raise UsageError(f"the directory of {what} {path} does not exist; create it or change {flag}")
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".distill-write-test-"):
            pass
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError
    except OSError:
        raise UsageError(f"cannot write {what} {path}; change {flag} or the permissions") from None


def run(job: RunJob, observer: RunObserver | None = None) -> RunReport:
    """Run ``job`` to the end (or to a signal) and return its report.

    Nothing is printed: ``observer`` (a :class:`~distill.progress.RunObserver`, such as the CLI's
    :class:`~distill.progress_bar.ProgressBar`) hears the progress, warnings and notes.
    """
    stats = RunStats(total_expected=job.limit)
    return _run_with_signals(run_async(job, observer, stats), stats)


async def run_async(
    job: RunJob, observer: RunObserver | None = None, stats: RunStats | None = None
) -> RunReport:
    from formats.readers import ReaderOptions, open_reader
    from formats.writers import open_writer

    observer = observer or RunObserver()
    writer = open_writer(job.output_format)  # an unknown format fails before anything is paid for
    _check_paths(job)
    check_max_share(job.max_reject_share)
    if job.budget_scope not in BUDGET_SCOPES:
        raise UsageError(
            f"--budget-scope must be one of {', '.join(BUDGET_SCOPES)}, got {job.budget_scope!r}"
        )
    check_key(job.settings.base_url, job.api_key, job.api_key_env)
    check_not_blank(job.input)
    reader = open_reader(
        job.input,
        job.input_format,
        ReaderOptions(system_prompt=job.settings.system_prompt, extra=dict(job.reader_options)),
    )
    reader = read_in_a_process(reader, job.input)  # a large input is read off the event loop's core
    input_path = str(job.input.resolve())
    run_id = job.settings.run_id(input_path)
    stats = stats if stats is not None else RunStats(total_expected=job.limit)
    tally = RejectTally()
    rejects = RejectsWriter(rejects_path_for(job.output), append=False)

    def on_reject(
        reject: Reject,
    ) -> None:  # called only inside the ``async with`` below, where ``cache`` is open
        tally.note(reject)
        rejects.write(reject)
        cache.put_reject(run_id, reject)

    try:
        async with (
            Cache(job.cache) as cache,
            TeacherClient.for_settings(job.settings, job.api_key) as client,
        ):
            budget = _metered_budget(job, cache, run_id, stats)
            engine = Engine(
                job.settings,
                cache,
                _checked(job, client, observer),
                stats=stats,
                on_reject=on_reject,
                budget=budget,
                shard=job.shard,
            )
            rejects.remove_stale()
            await cache.clear_rejects(run_id)
            observer.started(stats)
            if observer.live and job.limit is None:  # a total for the display's bar and ETA
                estimating = asyncio.ensure_future(asyncio.to_thread(estimate_records, job.input))
                estimating.add_done_callback(lambda done: _set_total(stats, done.result()))
            try:
                records = screened(limited(reader.read(job.input), job.limit), writer)
                if job.batch is not None:
                    await _run_batch(
                        job, cache, records, run_id, input_path, stats, budget, on_reject, observer
                    )
                elif job.cluster is not None:
                    from .cluster.driver import answer_on_cluster

                    reader_stats = getattr(reader, "stats", None)
                    await answer_on_cluster(job, run_id, input_path, stats, on_reject, reader_stats, budget)
                else:
                    await engine.run(records, run_id, input_path)
            finally:
                observer.stopped(stats)
    finally:
        rejects.close()
    judged = {"input_path": job.input, "rejects_path": rejects.path, "max_share": job.max_reject_share}
    if stats.conversations_read == 0 and (job.shard is None or tally.rejected):
        judge(tally, 0, hint=format_hint(job.input, job.input_format), **judged)  # raises: nothing to write
    result = export(job.cache, job.output, writer.line, run_id, job.val_fraction)
    if job.check_output and result.written > result.validation_written:  # an empty file has nothing to check
        check_output(job.output)
    if job.check_output and result.validation_written:
        check_output(result.validation_path)
    manifest = write_manifest(job, run_id, stats, result, getattr(reader, "stats", None), rejects.count)
    report = RunReport(run_id, stats, result, manifest, rejects.path if rejects.count else None, job.input)
    try:
        warning = judge(tally, stats.conversations_read, **judged)
    except DistillError as error:
        error.report = report  # type: ignore[attr-defined]
        raise
    if warning is not None:
        report.warnings.append(warning)
        observer.warn(warning)
    if budget is not None and budget.refused > 0:
        stop = BudgetReached(_budget_stop_message(job, budget, result))
        stop.report = report  # type: ignore[attr-defined]
        raise stop
    return report


def _check_paths(job: RunJob) -> None:
    """Every file the run writes can be written, and the cache is one: checked before anything is paid for."""
    check_writable(job.output, "output", "--output")
    for beside, what in (
        (rejects_path_for(job.output), "rejects file"),
        (manifest_path(job.output), "manifest"),
    ):
        check_writable(beside, what, "--output")  # written at the end: a directory there fails now, unpaid
    check_writable(Path(f"{job.output}.tmp"), "temporary output", "--output")
    if job.val_fraction:
        from .split import check_fraction, validation_path

        check_fraction(job.val_fraction)
        check_writable(validation_path(job.output), "validation file", "--output")
    check_file(job.cache)


def _checked(job: RunJob, client: TeacherClient, observer: RunObserver) -> CheckedClient:
    """``client`` behind the pre-flight check (``job.preflight``) and the missing-endpoint rule."""
    settings = job.settings

    async def check() -> None:
        await preflight(settings.base_url, settings.model, job.api_key, job.api_key_env, observer.warn)

    return CheckedClient(client, check if job.preflight else None)


def _metered_budget(job: RunJob, cache: Cache, run_id: str, stats: RunStats) -> Budget | None:
    """The run's budget (or a meter without a cap, where the price is known); every charge is kept in the cache."""
    if job.budget is None and job.price is None:
        return None
    spent_before = cache.spent(run_id)

    def on_charge(usd: float, prompt_tokens: int, completion_tokens: int) -> None:
        stats.cost_usd = (stats.cost_usd or 0.0) + usd
        cache.add_spend(run_id, usd, prompt_tokens, completion_tokens)

    budget = budget_for(
        job.budget,
        job.settings.model,
        job.price,
        batch=job.batch is not None,
        spent_before=spent_before if job.budget_scope == "total" else 0.0,
        on_charge=on_charge,
    )
    stats.cost_usd, stats.cost_before_usd, stats.budget_usd = 0.0, spent_before, job.budget
    return budget


def _budget_stop_message(job: RunJob, budget: Budget, result: ExportResult) -> str:
    again = (
        "Run the same command again with a higher --budget to continue (it counts what was spent on these "
        "settings before; --budget-scope run caps each invocation alone)"
        if job.budget_scope == "total"
        else "Run the same command again to continue (--budget-scope run: each invocation has its own --budget)"
    )
    return (
        f"{budget.summary()}; the next request would go over it, so the run stopped sending; the "
        f"{result.written} conversations answered so far are in {job.output}. {again}: nothing answered is paid "
        "for twice"
    )


async def _run_batch(
    job: RunJob,
    cache: Cache,
    records,
    run_id: str,
    input_path: str,
    stats: RunStats,
    budget,
    on_reject,
    observer: RunObserver,
) -> None:
    """Answer the run through a provider's Batch API (``--batch``) instead of live requests."""
    from .batch import BatchRunner, open_provider

    stats.learned_rpm = stats.rate_source = None  # a Batch API is not paced by a request rate

    assert job.batch is not None
    provider = open_provider(job.batch, job.settings, job.api_key)
    log = observer.note
    runner = BatchRunner(
        job.settings,
        cache,
        provider,
        job.batch,
        stats=stats,
        budget=budget,
        shard=job.shard,
        on_reject=on_reject,
        log=log,
    )
    try:
        await runner.run(records, run_id, input_path)
    finally:
        await provider.close()


def _set_total(stats: RunStats, estimate: int | None) -> None:
    stats.total_expected = estimate


def check_output(path: Path) -> None:
    """The same checks ``distill check`` makes; a file the writers produced must pass them."""
    from formats.check import check_file as check_fine_tuning_file

    report = check_fine_tuning_file(path, count_tokens=False)
    if not report.ok:
        raise DistillError(f"the output {path} failed its own check:\n{report.format()}")


def _run_with_signals(coro, stats: RunStats | None = None) -> RunReport:
    loop = asyncio.new_event_loop()
    task = loop.create_task(coro)
    stopped_by: list[str] = []

    def stop(signame: str) -> None:
        stopped_by.append(signame)
        if len(stopped_by) == 1:  # a second signal must not cut short the commit of what was answered
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop, sig.name)
    try:
        return loop.run_until_complete(task)
    except asyncio.CancelledError:
        raise Interrupted(
            f"stopped by {stopped_by[0] if stopped_by else 'cancellation'}; every answer received is saved in the "
            "cache: run the same command again to resume",
            stats,
        ) from None
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
