"""The end-of-run summary: every file written with its count, counts that add up, the money, the failures.

input    in.json: 62 records: 60 conversations, 2 rejected (3.2%) -> out.jsonl.rejects.jsonl
output   out.jsonl: 57 conversations
         out.val.jsonl: 3 conversations (--val-fraction)
         60 conversations = 57 + 3 written + 0 failed + 0 not answered
manifest out.jsonl.manifest.json
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from .export import ExportResult
from .progress import cost_text, duration
from .stats import RunStats


class RunReport(Protocol):
    """What the summary reads of :class:`distill.runner.RunReport`."""

    stats: RunStats
    export: ExportResult
    manifest: Path
    rejects: Path | None
    input: Path | None


MAX_FAILURES_LISTED = 20


def describe(report: RunReport) -> str:
    """The summary of a finished run, one subject a line."""
    stats, result = report.stats, report.export
    train = result.written - result.validation_written
    records = stats.conversations_read + stats.rejects
    rejected = f", {stats.rejects} rejected ({stats.rejects / records:.1%})" if stats.rejects else ""
    rejects_file = f" -> {report.rejects}" if report.rejects else ""
    lines = [
        f"input    {report.input}: {records} records: {stats.conversations_read} conversations{rejected}{rejects_file}",
        f"wrote    {result.path}: {train} conversations",
    ]
    if result.validation_path is not None:
        lines.append(
            f"         {result.validation_path}: {result.validation_written} conversations (--val-fraction)"
        )
    written = (
        f"{train} + {result.validation_written} written" if result.validation_path else f"{train} written"
    )
    lines.append(
        f"         {result.written + result.failed + result.incomplete} conversations = {written} + "
        f"{result.failed} failed + {result.incomplete} not answered"
    )
    lines.append(f"manifest {report.manifest}")
    lines += activity(stats)
    for conv_id, source, reason in stats.failures[:MAX_FAILURES_LISTED]:
        lines.append(f"  failed {conv_id} ({source}): {reason}")
    if len(stats.failures) > MAX_FAILURES_LISTED:
        lines.append(f"  ... and {len(stats.failures) - MAX_FAILURES_LISTED} more (see the manifest)")
    return "\n".join(lines)


def activity(stats: RunStats) -> list[str]:
    """What the run did: turns, requests, tokens, money and time."""
    lines = [
        f"turns    {stats.turns_done} answered ({stats.finished_length} cut off at max_tokens)",
        f"requests {stats.requests_sent} sent, {stats.cache_hits} from cache, {stats.shared_in_flight} shared in "
        f"flight, {stats.retries} retries, {stats.rate_limited} answered 429",
        f"tokens   {stats.prompt_tokens} prompt, {stats.completion_tokens} completion (as the server reported)",
    ]
    cost = cost_text(stats)
    if cost is not None:
        lines.append(f"cost     {cost}")
    lines.append(f"time     {duration(stats.elapsed())} ({stats.requests_per_second():.1f} requests/s)")
    return lines


def describe_interrupted(stats: RunStats, cache: object, resume: str) -> str:
    """What an interrupted run saved, and the command that resumes it."""
    return "\n".join(
        [
            f"saved    {stats.conversations_done} conversations finished, {stats.turns_done} turns answered, in "
            f"the cache {cache} (the output file is written when the run completes)",
            *activity(stats),
            f"resume   {resume}",
        ]
    )
