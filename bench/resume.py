"""Target 4, resume: over a cache holding 100,000 finished conversations, a rerun's first new request comes
within 2 s, and nothing is sent for the finished ones.

The cache is filled as a finished run leaves it (the run's settings, its input conversations marked finished and one
answer per turn under the key the engine computes) straight through the cache API, which takes seconds instead of
the minute a teacher would. The details also give the time over the same cache without the finished marks (as a
cache written before schema 3, or merged, is): there every finished conversation's requests are planned and looked
up, turn by turn, before it is skipped; that rerun marks them, so only the first one pays. The input is those
100,000 conversations followed by 1,000 new ones, so the rerun has to get past every finished conversation before it
reaches a new one. ``distill run`` is started as a process; the figure is the time from its start to the teacher's
first request (polled from the teacher every 5 ms).

    python -m bench.resume [--tiny] [--json PATH]
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bench.common import (
    MODEL,
    Completed,
    RequestClock,
    Result,
    check_completed,
    distill_command,
    parser,
    report,
    run_command,
    shown,
    teacher,
    workdir,
    write_conversations,
)
from distill import plan
from distill.cache import Cache
from distill.requests import TeacherResponse
from distill.settings import RunSettings
from distill.stored import encode_conversation
from formats.readers import ReaderOptions, open_reader

GOAL_SECONDS = 2.0


async def fill(cache_path: Path, source: Path, base_url: str, *, marked: bool = True) -> int:
    """Answer every conversation of ``source`` into the cache as a finished ``distill run`` would have
    (without the finished marks if not ``marked``)."""
    settings = RunSettings(model=MODEL, base_url=base_url)
    input_path = str(source.resolve())
    run_id = settings.run_id(input_path)
    reader = open_reader(source, None, ReaderOptions())
    count = 0
    async with Cache(cache_path, max_batch=50_000) as cache:
        await cache.record_run(run_id, input_path, settings.request_identity())
        rows = []
        for position, conversation in enumerate(reader.read(source)):
            rows.append((position, conversation.id, conversation.source, encode_conversation(conversation)))
            texts: list[str] = []
            for k in range(plan.turn_count(conversation, settings)):
                request = plan.request_for(conversation, settings, k, texts)
                texts.append(f"A stored answer to {conversation.id}, turn {k}.")
                cache.put(request.key, request.identity_json, TeacherResponse(texts[-1], "stop", 20, 10))
            if marked:
                cache.mark_finished(run_id, position)
            count += 1
            if len(rows) >= 10_000:
                cache.add_conversations(run_id, rows)
                rows = []
                await cache.flush()
        cache.add_conversations(run_id, rows)
        await cache.flush()
    return count


def seconds_to_first_request(root: Path, source: Path, served, cache: Path) -> tuple[float, int, Completed]:
    """Run ``distill run`` over ``source``; the time from its start to the teacher's first request, and what the
    teacher received."""
    command = distill_command(source, root / "resume.out.jsonl", cache, served.base_url)
    served.reset_stats()
    with RequestClock(served, interval=0.005) as clock:
        started = time.perf_counter()
        done = run_command(command)
    check_completed(done, "distill run")
    first = clock.first_request_at()
    seconds = first - started if first is not None else float("inf")
    return seconds, served.stats(with_hashes=False)["requests"], done


def measure(root: Path, finished: int, new: int) -> Result:
    source = write_conversations(root / "resume.jsonl", finished)
    with teacher() as served:
        asyncio.run(fill(root / "resume.sqlite", source, served.base_url))
        asyncio.run(fill(root / "unmarked.sqlite", source, served.base_url, marked=False))
        write_conversations(source, new, start=finished)
        seconds, received, done = seconds_to_first_request(root, source, served, root / "resume.sqlite")
        unmarked, unmarked_received, _ = seconds_to_first_request(
            root, source, served, root / "unmarked.sqlite"
        )
    command = distill_command(source, root / "resume.out.jsonl", root / "resume.sqlite", served.base_url)
    exact = received == new and unmarked_received == new
    return Result(
        target="4 resume",
        case=f"{finished:,} finished conversations in the cache, {new:,} new after them",
        figure=seconds,
        unit="s to the first new request",
        reference=GOAL_SECONDS,
        ratio=seconds / GOAL_SECONDS,
        goal=f"<= {GOAL_SECONDS:g} s; no request for a finished conversation",
        passed=seconds <= GOAL_SECONDS and exact,
        detail={
            "teacher_received": received,
            "expected": new,
            "command_seconds": round(done.seconds, 3),
            "peak_rss_mb": round(done.peak_rss_mb, 1),
            "unmarked_cache_seconds_to_first_request": round(unmarked, 3),
            "unmarked_cache_teacher_received": unmarked_received,
        },
        command=shown(command),
    )


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__).parse_args(argv)
    finished, new = (500, 20) if args.tiny else (100_000, 1_000)
    with workdir() as root:
        results = [measure(root, finished, new)]
    return report(results, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
