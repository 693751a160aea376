"""A plain aiohttp client loop: the baseline requests/s a teacher serves (issue: Performance).

``python -m distill.servers.teacher.loadgen`` starts a teacher in its own process, keeps ``--in-flight``
requests open against it for ``--seconds`` with one aiohttp session, and prints the requests/s; pass
``--base-url`` to load a server that is already running instead.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What :func:`plain_client_load` measured."""

    requests: int
    ok: int
    seconds: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


async def plain_client_load(
    base_url: str, *, in_flight: int = 64, seconds: float = 5.0, model: str = "distill-teacher"
) -> LoadResult:
    """Send distinct single-turn chat requests to ``base_url`` with ``in_flight`` workers for ``seconds``."""
    counter = itertools.count()
    url = base_url.rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json", "Authorization": "Bearer local"}
    deadline = time.perf_counter() + seconds

    async def worker(session: aiohttp.ClientSession) -> tuple[int, int]:
        sent = ok = 0
        while time.perf_counter() < deadline:
            n = next(counter)
            body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": f"question {n}"}]})
            async with session.post(url, data=body, headers=headers) as response:
                orjson.loads(await response.read())
                sent += 1
                ok += response.status == 200
        return sent, ok

    connector = aiohttp.TCPConnector(limit=in_flight)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        counts = await asyncio.gather(*(worker(session) for _ in range(in_flight)))
        elapsed = time.perf_counter() - start
    return LoadResult(sum(sent for sent, _ in counts), sum(ok for _, ok in counts), elapsed)


def process_cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU seconds a process has used so far (Linux ``/proc``; 0.0, 0.0 elsewhere or once gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process has used so far (Linux ``/proc``; 0.0 elsewhere)."""
    return sum(process_cpu_times(pid))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distill.servers.teacher.loadgen", description=__doc__)
    parser.add_argument(
        "--base-url", help="load this server instead of starting one (e.g. http://127.0.0.1:8000/v1)"
    )
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--loop", choices=("auto", "asyncio", "uvloop"), default="auto", help="the server's loop"
    )
    args = parser.parse_args(argv)
    if args.base_url:
        result = asyncio.run(plain_client_load(args.base_url, in_flight=args.in_flight, seconds=args.seconds))
    else:
        from .process import start_teacher_process

        with start_teacher_process(loop=args.loop) as teacher:
            cpu_before = process_cpu_seconds(teacher.pid)
            result = asyncio.run(
                plain_client_load(teacher.base_url, in_flight=args.in_flight, seconds=args.seconds)
            )
            cpu = process_cpu_seconds(teacher.pid) - cpu_before
            received = teacher.stats(with_hashes=False)["requests"]
        print(
            f"server received {received} requests; server CPU {cpu * 1e6 / max(1, received):.0f} us a request, "
            f"busy {100 * cpu / result.seconds:.0f}% of one core"
        )
    print(
        f"{result.requests} requests ({result.ok} answered 200) in {result.seconds:.2f} s: {result.rps:.0f} requests/s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
