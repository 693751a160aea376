"""The whole of ``distill run`` as one Python call: read, answer through the engine, export, check, report.

    from distill.runner import RunJob, run
    report = run(RunJob(input=Path("sharegpt.json"), output=Path("out.jsonl"), cache=Path("cache.sqlite"),
                        settings=RunSettings(model="m", base_url="http://127.0.0.1:8000/v1")))

Nothing is paid for before the input, the cache and the output path have been checked. SIGINT and SIGTERM stop
the run: what was answered is committed, and the same command resumes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import orjson

from formats.rejects import RejectsWriter, rejects_path_for

from .cache import Cache, check_file
from .client import TeacherClient
from .conversation import Conversation, Record
from .cost import BudgetReached, Price, budget_for
from .engine import Engine
from .errors import DistillError, UsageError
from .estimate import estimate_records
from .export import ExportResult, export
from .progress import Progress, summary
from .settings import RunSettings
from .shard import Shard
from .stats import RunStats

if TYPE_CHECKING:
    from .batch import BatchOptions


class Interrupted(DistillError):
    """The run was stopped by a signal; everything answered so far is in the cache."""

    exit_code = 130


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
    quiet: bool = False
    check_output: bool = True
    val_fraction: float = 0.0
    shard: Shard | None = None
    budget: float | None = None
    price: Price | None = None
    batch: BatchOptions | None = None


@dataclass(slots=True)
class RunReport:
    run_id: str
    stats: RunStats
    export: ExportResult
    manifest: Path
    rejects: Path | None

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


def manifest_path(output: Path) -> Path:
    return output.with_name(output.name + ".manifest.json")


def run(job: RunJob, stream: TextIO = sys.stderr) -> RunReport:
    """Run ``job`` to the end (or to a signal) and return its report."""
    return _run_with_signals(run_async(job, stream))


async def run_async(job: RunJob, stream: TextIO = sys.stderr) -> RunReport:
    from formats.readers import ReaderOptions, open_reader
    from formats.writers import open_writer

    writer = open_writer(job.output_format)  # an unknown format fails before anything is paid for
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
    reader = open_reader(
        job.input,
        job.input_format,
        ReaderOptions(system_prompt=job.settings.system_prompt, extra=dict(job.reader_options)),
    )
    input_path = str(job.input.resolve())
    run_id = job.settings.run_id(input_path)
    stats = RunStats(total_expected=job.limit)
    budget = budget_for(job.budget, job.settings.model, job.price, batch=job.batch is not None)
    rejects = RejectsWriter(rejects_path_for(job.output), append=False)
    progress = Progress(stats, stream, live=None if not job.quiet else False)
    try:
        async with (
            Cache(job.cache) as cache,
            TeacherClient.for_settings(job.settings, job.api_key) as client,
        ):
            engine = Engine(
                job.settings,
                cache,
                client,
                stats=stats,
                on_reject=rejects.write,
                budget=budget,
                shard=job.shard,
            )
            rejects.remove_stale()
            progress.start()
            if progress.live and job.limit is None:
                estimating = asyncio.ensure_future(asyncio.to_thread(estimate_records, job.input))
                estimating.add_done_callback(lambda done: _set_total(stats, done.result()))
            try:
                records = limited(reader.read(job.input), job.limit)
                if job.batch is not None:
                    await _run_batch(
                        job, cache, records, run_id, input_path, stats, budget, rejects.write, stream
                    )
                else:
                    await engine.run(records, run_id, input_path)
            finally:
                progress.stop()
    finally:
        rejects.close()
    result = export(job.cache, job.output, writer.line, run_id, job.val_fraction)
    budget_stopped = budget is not None and budget.refused > 0
    if job.check_output and result.written > result.validation_written:  # an empty file has nothing to check
        check_output(job.output)
    if job.check_output and result.validation_written:
        check_output(result.validation_path)
    manifest = write_manifest(job, run_id, stats, result, getattr(reader, "stats", None))
    report = RunReport(run_id, stats, result, manifest, rejects.path if rejects.count else None)
    if not job.quiet:
        print(summary(stats), file=stream)
        print(f"wrote {result.written} conversations to {job.output} (manifest {manifest})", file=stream)
    if budget_stopped:
        stop = BudgetReached(
            f"{budget.summary()}; the next request would go over it, so the run stopped sending; the "
            f"{result.written} conversations answered so far "
            f"are in {job.output}. Run the same command again (with a new --budget) to continue: nothing "
            "answered is paid for twice"
        )
        stop.report = report  # type: ignore[attr-defined]
        raise stop
    return report


async def _run_batch(
    job: RunJob,
    cache: Cache,
    records,
    run_id: str,
    input_path: str,
    stats: RunStats,
    budget,
    on_reject,
    stream,
) -> None:
    """Answer the run through a provider's Batch API (``--batch``) instead of live requests."""
    from .batch import BatchRunner, open_provider

    assert job.batch is not None
    provider = open_provider(job.batch, job.settings, job.api_key)
    log = None if job.quiet else (lambda line: print(line, file=stream, flush=True))
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


def limited(records: Iterator[Record], limit: int | None) -> Iterator[Record]:
    """``records`` up to ``limit`` conversations (rejects pass through and do not count)."""
    if limit is None:
        yield from records
        return
    taken = 0
    for record in records:
        if taken >= limit:
            return
        if isinstance(record, Conversation):
            taken += 1
        yield record


def check_output(path: Path) -> None:
    """The same checks ``distill check`` makes; a file the writers produced must pass them."""
    from formats.check import check_file as check_fine_tuning_file

    report = check_fine_tuning_file(path, count_tokens=False)
    if not report.ok:
        raise DistillError(f"the output {path} failed its own check:\n{report.format()}")


def write_manifest(job: RunJob, run_id: str, stats: RunStats, result: ExportResult, reader_stats) -> Path:
    path = manifest_path(job.output)
    settings = asdict(job.settings)
    manifest = {
        "distill_version": _version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run_id": run_id,
        "input": {"path": str(job.input), "format": job.input_format, "sha256": sha256_file(job.input)},
        "output": {"path": str(job.output), "format": job.output_format, "sha256": sha256_file(job.output)},
        "validation": {
            "path": str(result.validation_path),
            "fraction": job.val_fraction,
            "conversations": result.validation_written,
            "sha256": sha256_file(result.validation_path),
        }
        if result.validation_path
        else None,
        "cache": str(job.cache),
        "model": job.settings.model,
        "settings": settings,
        "counts": {
            "written": result.written,
            "failed": result.failed,
            "incomplete": result.incomplete,
            "rejects": stats.rejects,
            "turns": result.turns,
            "finished_length": result.finished_length,
        },
        "tokens": {"prompt": result.prompt_tokens, "completion": result.completion_tokens},
        "this_run": stats.to_dict(),
        "reader": reader_stats,
    }
    path.write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS, default=str))
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _version() -> str:
    from . import __version__

    return __version__


def _run_with_signals(coro) -> RunReport:
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
            "cache: run the same command again to resume"
        ) from None
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
