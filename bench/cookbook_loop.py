"""A baseline, not distill: the OpenAI cookbook's answer to a limit nobody told, as a plain aiohttp loop.

The cookbook's ``api_request_parallel_processor.py`` (openai-cookbook, ``examples/``) sends at a rate the user
gives, and after a rate-limit error it starts no new request for ``seconds_to_pause_after_rate_limit_error = 15``
seconds; a failed request goes back to a retry queue that is served before new requests, until its
``max_attempts = 5`` are used up, and it is then lost. This loop keeps exactly that reaction to a 429 and drops the
rate the user would have to guess: it holds ``in_flight`` requests open (as ``distill run --concurrency`` does)
and nothing else paces it. It ignores ``Retry-After``, as the cookbook does.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import aiohttp

PAUSE_S = 15.0
ATTEMPTS = 5
RETRY, FRESH = 0, 1  # priorities: a retry goes before any new request


@dataclass(slots=True)
class LoopOutcome:
    """What the loop got: answers, prompts lost after their last attempt, 429s, and when each send and 429 was."""

    answered: int = 0
    lost: int = 0
    refused: int = 0
    sends: list[float] = field(default_factory=list)
    refusals: list[float] = field(default_factory=list)


async def paused_loop(
    base_url: str,
    model: str,
    prompts: Sequence[str],
    *,
    in_flight: int = 256,
    pause_s: float = PAUSE_S,
    attempts: int = ATTEMPTS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> LoopOutcome:
    """Send every prompt once as a chat completion; after any 429, no request starts for ``pause_s`` seconds."""
    outcome = LoopOutcome()
    order = itertools.count()
    queue: asyncio.PriorityQueue[tuple[int, int, int, int]] = asyncio.PriorityQueue()
    for index in range(len(prompts)):
        queue.put_nowait((FRESH, next(order), index, attempts))
    last_refusal = [float("-inf")]

    async def wait_out_pause() -> None:
        while (left := last_refusal[0] + pause_s - clock()) > 0:
            await sleep(left)

    async def send(session: aiohttp.ClientSession, index: int) -> int:
        body = {"model": model, "messages": [{"role": "user", "content": prompts[index]}]}
        try:
            async with session.post(f"{base_url}/chat/completions", json=body) as response:
                await response.read()
                return response.status
        except (TimeoutError, aiohttp.ClientError):
            return 0

    async def worker(session: aiohttp.ClientSession) -> None:
        while True:
            _, _, index, left = await queue.get()
            await wait_out_pause()
            outcome.sends.append(clock())
            status = await send(session, index)
            if status == 200:
                outcome.answered += 1
            else:
                if status == 429:
                    outcome.refused += 1
                    last_refusal[0] = clock()
                    outcome.refusals.append(last_refusal[0])
                if left > 1:
                    queue.put_nowait((RETRY, next(order), index, left - 1))
                else:
                    outcome.lost += 1
            queue.task_done()

    connector = aiohttp.TCPConnector(limit=in_flight)
    async with aiohttp.ClientSession(
        connector=connector, headers={"Authorization": "Bearer local"}
    ) as session:
        workers = [asyncio.create_task(worker(session)) for _ in range(in_flight)]
        try:
            await queue.join()
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
    return outcome
