"""Target 1, where the CPU goes: microseconds of the client process's CPU per request, rung by rung.

Three loops send the same single-turn chat requests, 64 in flight, to the same local teacher (its own process),
one after another and round after round: a bare aiohttp loop (the throughput baseline's), distill's
``TeacherClient.send`` (request JSON, rate headers, answer parsing, the request deadline), and the whole engine
(request building and keys, cache look-ups and group commits, limiter, retries, bookkeeping) over an empty cache.
CPU is the user plus system time of the process (every thread) and of the children it waited for (the cache's
writer process, :mod:`distill.cache_writer`, ends with the cache), so the difference between two rungs is what the
upper one adds per request, whatever else the machine runs; the median over rounds is shown.

    python -m bench.cpu_per_request [--tiny] [--json PATH]
"""

from __future__ import annotations

import asyncio
import itertools
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import orjson

from bench.common import MODEL, Result, parser, question, report, teacher, workdir
from distill.cache import Cache
from distill.client import TeacherClient
from distill.conversation import Conversation, Message
from distill.engine import Engine
from distill.requests import TeacherRequest
from distill.settings import RunSettings

IN_FLIGHT = 64
GOAL = 0.7


async def bare_loop(url: str, count: int, root: Path) -> None:
    counter = itertools.count()
    headers = {"Content-Type": "application/json", "Authorization": "Bearer local"}

    async def worker(session: aiohttp.ClientSession) -> None:
        while (n := next(counter)) < count:
            body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": question(n)}]})
            async with session.post(url + "/chat/completions", data=body, headers=headers) as response:
                orjson.loads(await response.read())

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=IN_FLIGHT)) as session:
        await asyncio.gather(*(worker(session) for _ in range(IN_FLIGHT)))


async def client_loop(url: str, count: int, root: Path) -> None:
    counter = itertools.count()

    async def worker(client: TeacherClient) -> None:
        while (n := next(counter)) < count:
            await client.send(TeacherRequest("chat", MODEL, (), messages=(("user", question(n)),)))

    async with TeacherClient(url, "local", max_connections=IN_FLIGHT) as client:
        await asyncio.gather(*(worker(client) for _ in range(IN_FLIGHT)))


async def engine_run(url: str, count: int, root: Path) -> None:
    settings = RunSettings(model=MODEL, base_url=url, concurrency=IN_FLIGHT)
    conversations = (
        Conversation(f"c{n}", [Message("user", question(n))], f"bench:{n}") for n in range(count)
    )
    cache_path = root / f"engine-{time.monotonic_ns()}.sqlite"
    async with Cache(cache_path) as cache, TeacherClient.for_settings(settings, "local") as client:
        stats = await Engine(settings, cache, client).run(conversations, "bench", "bench")
    if stats.requests_sent != count:
        raise SystemExit(f"the engine sent {stats.requests_sent} requests, not {count}")


RUNGS: dict[str, Callable[[str, int, Path], Awaitable[None]]] = {
    "bare aiohttp loop": bare_loop,
    "TeacherClient.send": client_loop,
    "engine": engine_run,
}


def cpu_seconds() -> float:
    """CPU of this process (every thread) and of its children that ended (the cache's writer process)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def cpu_us_per_request(rung, url: str, count: int, root: Path) -> float:
    start = cpu_seconds()
    asyncio.run(rung(url, count, root))
    return (cpu_seconds() - start) / count * 1e6


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__).parse_args(argv)
    count, rounds = (200, 1) if args.tiny else (8000, 5)
    samples: dict[str, list[float]] = {name: [] for name in RUNGS}
    with workdir() as root, teacher() as served:
        for _ in range(rounds):
            for name, rung in RUNGS.items():
                samples[name].append(cpu_us_per_request(rung, served.base_url, count, root))
    median = {name: statistics.median(values) for name, values in samples.items()}
    bare = median["bare aiohttp loop"]
    results = []
    for name in ("TeacherClient.send", "engine"):
        ratio = bare / median[name]
        results.append(
            Result(
                target="1 throughput (CPU)",
                case=f"{name}, {count:,} requests x {rounds} rounds, {IN_FLIGHT} in flight",
                figure=median[name],
                unit="us CPU/request",
                reference=bare,
                ratio=ratio,
                goal=f"the bare loop's CPU >= {GOAL} of ours",
                passed=ratio >= GOAL,
                detail={
                    "us_per_request": {k: [round(v, 1) for v in values] for k, values in samples.items()},
                    "added_over_the_rung_below_us": round(
                        median[name]
                        - (bare if name == "TeacherClient.send" else median["TeacherClient.send"]),
                        1,
                    ),
                },
                command="python -m bench.cpu_per_request",
            )
        )
    return report(results, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
