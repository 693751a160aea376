"""aiohttp applications on 127.0.0.1, as the bundled servers run them: bound to a port (0: a free one), and
served from a background thread for synchronous callers (an SDK, the pipeline, a test)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

HOST = "127.0.0.1"
SHUTDOWN_SECONDS = 3.0


async def listen(
    app: web.Application, port: int = 0, *, host: str = HOST, **runner_options: Any
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port``; the runner (``cleanup()`` stops it) and the port bound.

    Stopping waits at most :data:`SHUTDOWN_SECONDS` for the exchanges in progress (aiohttp's default is 60 s): a
    client that was refused before its upload ended can hold its connection open until it is collected, and
    :func:`in_thread` gives ``stop()`` 10 s.
    """
    runner = web.AppRunner(app, **{"shutdown_timeout": SHUTDOWN_SECONDS, **runner_options})
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=1024).start()
    except OSError:
        await runner.cleanup()
        raise
    return runner, runner.addresses[0][1]


@contextmanager
def in_thread(start: Callable[[], Awaitable[Any]], stop: Callable[[], Awaitable[Any]]) -> Iterator[None]:
    """Run ``start()`` on a background thread's event loop, keep that loop serving while the block runs, then
    ``stop()`` it. An exception from ``start()`` is raised here."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=60)
        yield
    finally:
        try:
            asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()
