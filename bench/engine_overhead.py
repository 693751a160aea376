"""Target 1, what distill's own code costs: CPU per request of a run with the HTTP exchange taken out.

The throughput benchmark divides two network rates measured on a shared machine, and moves by a few percent from
one run to the next. This one isolates what the engine adds and is steady to about 1%: the reader reads a
messages JSONL file, the engine answers it into a fresh cache (group commits, the writer process, the limiter,
the rate watch, deadlines, retries, bookkeeping), and ``aiohttp.ClientSession.post`` is replaced by a stand-in
that yields to the event loop once and returns a real teacher's 200 answer and headers. The figure is the run's
CPU time (``time.process_time``: the event loop's process; the writer is a process of its own) per request,
the least of ``--rounds`` runs.

Compare two trees by running this file with ``PYTHONPATH`` on each, from a directory outside both (``python -m``
puts the working directory first on ``sys.path``, and the cache's writer is started with ``-m``)::

    cd /tmp && PYTHONPATH=/path/to/tree python /path/to/bench/engine_overhead.py [--turns 4]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from bench.common import MODEL, write_conversations
from distill.cache import Cache
from distill.client import TeacherClient
from distill.engine import Engine
from distill.settings import RunSettings
from formats.readers import ReaderOptions, open_reader

# what the bench's local teacher answers (bench.common.teacher), captured once
BODY = (
    b'{"id":"chatcmpl-bdadc91565707723","object":"chat.completion","created":1796279789,"model":"bench-teacher",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"Answer to: Question 5: in one paragraph, why '
    b'does the number 5 matter t [742a7285]"},"finish_reason":"stop"}],"usage":{"prompt_tokens":20,'
    b'"completion_tokens":15,"total_tokens":35}}'
)
HEADERS = CIMultiDictProxy(
    CIMultiDict(
        {
            "x-teacher-request-hash": "bdadc91565707723",
            "Content-Type": "application/json",
            "Content-Length": str(len(BODY)),
            "Date": "Thu, 03 Dec 2026 06:36:29 GMT",
            "Server": "Python/3.11 aiohttp/3.14.5",
        }
    )
)


class _Answer:
    status = 200
    headers = HEADERS

    async def read(self) -> bytes:
        return BODY


class _Exchange:
    """What ``session.post(...)`` returns: one turn of the loop, as a network answer takes at least."""

    async def __aenter__(self) -> _Answer:
        await asyncio.sleep(0)
        return _Answer()

    async def __aexit__(self, *exc: object) -> None:
        return None


def _post(session: aiohttp.ClientSession, url: str, **kwargs: object) -> _Exchange:
    return _Exchange()


async def cpu_per_request(source: Path, cache: Path, requests: int, concurrency: int) -> float:
    """Microseconds of this process's CPU per request for one run of ``source`` into a fresh ``cache``."""
    settings = RunSettings(model=MODEL, base_url="http://127.0.0.1:9/v1", concurrency=concurrency)
    reader = open_reader(source, None, ReaderOptions())
    async with Cache(cache) as opened, TeacherClient.for_settings(settings, "local") as client:
        started = time.process_time()
        stats = await Engine(settings, opened, client).run(reader.read(source), "bench", str(source))
        spent = time.process_time() - started
    if stats.requests_sent != requests:
        raise SystemExit(f"the engine sent {stats.requests_sent} requests, not {requests}")
    return spent / requests * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conversations", type=int, default=40_000)
    parser.add_argument("--turns", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args(argv)
    real_post = aiohttp.ClientSession.post
    aiohttp.ClientSession.post = _post  # type: ignore[method-assign]
    try:
        with tempfile.TemporaryDirectory(prefix="distill-bench-") as tmp:
            root = Path(tmp)
            source = write_conversations(root / "in.jsonl", args.conversations, args.turns)
            requests = args.conversations * args.turns
            figures = [
                asyncio.run(cpu_per_request(source, root / f"cache-{n}.sqlite", requests, args.concurrency))
                for n in range(args.rounds)
            ]
    finally:
        aiohttp.ClientSession.post = real_post  # type: ignore[method-assign]
    shown = ", ".join(f"{f:.1f}" for f in figures)
    print(
        f"{requests:,} requests, {args.turns} turn(s) each: {min(figures):.1f} us CPU a request (rounds: {shown})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
