"""Issue 15, ``distill view`` over a large cache: the first page of the conversations list under 300 ms.

The cache is filled through the cache API the way a run fills it (the run, its input conversations, each marked
finished with its answer and that answer's HTTP attempt, one in 500 marked failed by a recorded failure), so the
search index and the indexes are the ones the migration made; the charts pages scan the answers and attempts. The viewer is started as ``distill view`` starts it and asked over
HTTP on 127.0.0.1; each figure is the median wall time of a page over several requests. The reference is what a
viewer that loads the run whole would pay before showing anything: reading and decoding every conversation.

    python -m bench.view_list [--tiny] [--conversations N] [--keep CACHE] [--json PATH]
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import aiohttp
import orjson

from bench.common import MODEL, Result, parser, report, workdir
from distill.cache import Cache
from distill.conversation import Conversation, Message
from distill.requests import TeacherResponse
from distill.settings import RunSettings
from distill.stored import encode_conversation
from distill.view.server import start
from distill.view.store import open_cache

GOAL_MS = 300.0
RARE_WORD = "zanzibarian"
WORDS = ("how", "does", "the", "river", "carry", "salt", "into", "a", "quiet", "sea", "every", "spring")
FAILED_EVERY = 500


def conversation(n: int, rare_at: int) -> Conversation:
    words = " ".join(WORDS[(n + i) % len(WORDS)] for i in range(40))
    first = f"Question {n}: {words}?" + (f" Ask the {RARE_WORD} keeper." if n == rare_at else "")
    messages = [Message("user", first), Message("assistant", f"The dataset's answer {n}: {words}.")]
    if n % 2:
        messages += [Message("user", f"And then, {words}?"), Message("assistant", "A second answer.")]
    return Conversation(f"conv-{n}", messages, f"input.jsonl:{n + 1}")


async def fill(cache_path: Path, count: int) -> str:
    """A cache holding ``count`` conversations of one run, as a run leaves them; returns the run id."""
    settings = RunSettings(model=MODEL, base_url="http://127.0.0.1:1/v1")
    run_id = settings.run_id("/bench/input.jsonl")
    async with Cache(cache_path, max_batch=20_000) as cache:
        await cache.record_run(run_id, "/bench/input.jsonl", settings.request_identity())
        rows = []
        for n in range(count):
            conv = conversation(n, count * 2 // 3)
            rows.append((n, conv.id, conv.source, encode_conversation(conv)))
            if len(rows) == 5000 or n == count - 1:
                cache.add_conversations(run_id, rows)
                await cache.flush()
                for position, *_ in rows:
                    if position % FAILED_EVERY == 7:
                        key = f"failed-{position}"
                        cache.put_failure(key, "422 from the teacher: refused", 422)
                        cache.mark_failed(run_id, position, key)
                    else:
                        tokens = 50 + position % 700
                        answer = TeacherResponse("answer", "length" if tokens > 600 else "stop", 40, tokens)
                        key = f"answer-{position}"
                        cache.put(key, b"{}", answer)  # an answer and its attempt each: what the charts read
                        cache.log_attempt(key, time.time(), 0.05, 429 if position % 97 == 0 else 200, None)
                        cache.mark_finished(run_id, position, [answer])
                await cache.flush()
                rows = []
        await cache.record_run_end(run_id)
    return run_id


def load_everything(cache_path: Path, run_id: str) -> float:
    """Seconds to read and decode every conversation of the run (what a load-it-all viewer pays first)."""
    start_at = time.perf_counter()
    conn = open_cache(cache_path)
    for (data,) in conn.execute("SELECT data FROM conversations WHERE run_id = ?", (run_id,)):
        orjson.loads(data)
    conn.close()
    return time.perf_counter() - start_at


async def timed_pages(cache_path: Path, run_id: str, count: int, rounds: int) -> dict[str, list[float]]:
    runner, url = await start(cache_path, "127.0.0.1", 0)
    pages = {
        "first page": f"runs/{run_id}/conversations",
        "runs page (counts over the run)": "",
        f"page at position {count - 60:,}": f"runs/{run_id}/conversations?after={count - 60}",
        "search, one match": f"runs/{run_id}/conversations?q={RARE_WORD}",
        "search, every conversation matches": f"runs/{run_id}/conversations?q=river+salt",
        "failed filter": f"runs/{run_id}/conversations?failed=1",
        "a turn over 740 tokens": f"runs/{run_id}/conversations?tokens=740",
        "shard 3/8": f"runs/{run_id}/conversations?shard=3/8",
        "validation split (0.05)": f"runs/{run_id}/conversations?split=validation",
        "one conversation": f"runs/{run_id}/conversations/{count // 2}",
        "the run's charts": f"runs/{run_id}/charts",
        "the whole cache's charts": "charts",
    }
    seconds: dict[str, list[float]] = {}
    try:
        async with aiohttp.ClientSession() as session:
            for name, path in pages.items():
                for _ in range(rounds):
                    start_at = time.perf_counter()
                    async with session.get(url + path) as response:
                        body = await response.text()
                    elapsed = time.perf_counter() - start_at
                    assert response.status == 200, (name, response.status, body[:300])
                    assert "No conversation matches" not in body, name
                    seconds.setdefault(name, []).append(elapsed)
    finally:
        await runner.cleanup()
    return seconds


def measure(root: Path, count: int, rounds: int, kept: Path | None = None) -> list[Result]:
    cache_path = kept or root / "view.sqlite"
    started = time.perf_counter()
    if kept is not None and kept.exists():
        run_id = open_cache(kept).execute("SELECT id FROM runs").fetchone()[0]
    else:
        run_id = asyncio.run(fill(cache_path, count))
    fill_seconds = time.perf_counter() - started
    reference_ms = load_everything(cache_path, run_id) * 1000
    seconds = asyncio.run(timed_pages(cache_path, run_id, count, rounds))
    medians = {name: statistics.median(s) * 1000 for name, s in seconds.items()}
    first = medians["first page"]
    detail = {
        "median_ms": {name: round(ms, 1) for name, ms in medians.items()},
        "rounds": rounds,
        "fill_seconds": round(fill_seconds, 1),
        "cache_mb": round(cache_path.stat().st_size / 1e6, 1),
        "load_everything_ms": round(reference_ms, 1),
    }
    return [
        Result(
            target="view list",
            case=f"{count:,} conversations, first page of 50 (HTTP, median of {rounds})",
            figure=first,
            unit="ms",
            reference=reference_ms,
            ratio=first / reference_ms,
            goal=f"< {GOAL_MS:g} ms (reference: loading the run whole)",
            passed=first < GOAL_MS,
            detail=detail,
            command=f"python -m bench.view_list --conversations {count}",
        )
    ]


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--conversations", type=int, default=100_000)
    p.add_argument("--keep", type=Path, help="fill this cache once and measure it again on later runs")
    args = p.parse_args(argv)
    count, rounds = (1000, 2) if args.tiny else (args.conversations, 7)
    with workdir() as root:
        results = measure(root, count, rounds, args.keep)
    for name, ms in results[0].detail["median_ms"].items():
        print(f"  {name}: {ms:,.1f} ms")
    return report(results, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
