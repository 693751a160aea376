"""Target 6, export: render a run's answers from the cache into a JSONL fine-tuning file at 50 MB/s or better.

The cache is filled the way a run fills it (the run's settings and input conversations, one answer per turn under
the key the engine would compute), but straight through the cache API rather than through a teacher, since the
export never talks to one. Conversations have 1 to 4 user turns and answers of about 1,450 characters: the mean
assistant turn of the real ShareGPT samples in ``../shared/data/sharegpt`` is 1,477 characters (venkat2811) and
1,516 (DialogStudio). The figure is the output's size over the wall time of ``distill.export.export``.

    python -m bench.export_speed [--tiny] [--json PATH]
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bench.common import MODEL, Result, parser, question, report, workdir
from distill import plan
from distill.cache import Cache
from distill.conversation import Conversation, Message
from distill.export import export
from distill.requests import TeacherResponse
from distill.settings import RunSettings
from distill.stored import encode_conversation
from formats.writers import open_writer

GOAL_MB_S = 50.0
ANSWER_WORDS = 260  # about 1,450 characters
WORDS = ("the", "teacher", "explains", "each", "step", "with", "care", "and", "a", "short", "example")


def conversation(n: int) -> Conversation:
    turns = 1 + n % 4
    messages = [Message("system", "You are a helpful assistant.")] if n % 3 == 0 else []
    for t in range(turns):
        messages.append(Message("user", question(n) + (f" Follow-up {t}." if t else "")))
        messages.append(Message("assistant", f"The dataset's own answer {n}.{t}."))
    return Conversation(f"conv-{n}", messages, f"input.jsonl:{n + 1}")


def answer(n: int, turn: int) -> str:
    words = [WORDS[(n + turn + i) % len(WORDS)] for i in range(ANSWER_WORDS)]
    return f"Answer {n}.{turn}: " + " ".join(words) + "."


async def fill(cache_path: Path, count: int, settings: RunSettings) -> tuple[str, int]:
    """A cache holding ``count`` answered conversations of one run; returns the run id and the turns."""
    input_path = "/bench/input.jsonl"
    run_id = settings.run_id(input_path)
    turns = 0
    async with Cache(cache_path, max_batch=20_000) as cache:
        await cache.record_run(run_id, input_path, settings.request_identity())
        rows = []
        for n in range(count):
            conv = conversation(n)
            rows.append((n, conv.id, conv.source, encode_conversation(conv)))
            texts: list[str] = []
            for k in range(plan.turn_count(conv, settings)):
                request = plan.request_for(conv, settings, k, texts)
                texts.append(answer(n, k))
                cache.put(request.key, request.identity_json, TeacherResponse(texts[-1], "stop", 40, 160))
                turns += 1
            if len(rows) >= 1000:
                cache.add_conversations(run_id, rows)
                rows = []
                await cache.flush()
        cache.add_conversations(run_id, rows)
    return run_id, turns


def measure(root: Path, count: int, rounds: int) -> Result:
    settings = RunSettings(model=MODEL, base_url="http://127.0.0.1:1/v1")
    cache_path = root / "export.sqlite"
    run_id, turns = asyncio.run(fill(cache_path, count, settings))
    output = root / "export.jsonl"
    speeds, seconds = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        result = export(cache_path, output, open_writer("messages").line, run_id)
        elapsed = time.perf_counter() - start
        size = output.stat().st_size
        speeds.append(size / 1e6 / elapsed)
        seconds.append(round(elapsed, 3))
    complete = result.written == count and result.turns == turns
    best = max(speeds)
    return Result(
        target="6 export",
        case=f"{count:,} conversations, {turns:,} turns, {size / 1e6:.1f} MB of JSONL",
        figure=best,
        unit="MB/s",
        reference=GOAL_MB_S,
        ratio=best / GOAL_MB_S,
        goal=f">= {GOAL_MB_S:g} MB/s; every conversation written",
        passed=best >= GOAL_MB_S and complete,
        detail={"seconds": seconds, "mb_per_s": [round(s, 1) for s in speeds], "written": result.written},
        command="distill export --cache $TMP/export.sqlite --output $TMP/export.jsonl",
    )


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__).parse_args(argv)
    count, rounds = (200, 1) if args.tiny else (20_000, 3)
    with workdir() as root:
        results = [measure(root, count, rounds)]
    return report(results, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
