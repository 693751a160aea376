"""Request deadlines with one timer for all of them: ``--request-timeout`` without a timer per request.

aiohttp's own total timeout arms and cancels an event-loop timer, and enters a timer context, for every request;
at thousands of requests a second that cost some 10 us of CPU a call (about a tenth of it). Here each request in
flight has a deadline in a dict, and one sweep every ``tick`` seconds cancels the tasks past theirs: a request is
abandoned between ``timeout`` and ``timeout + tick`` seconds after it started.

    task = deadlines.start()
    try:
        ...  # the request
    except asyncio.CancelledError:
        if deadlines.expired(task):
            raise RequestTimeout(...) from None
        raise
    finally:
        deadlines.finish(task)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

MAX_TICK = 1.0


class Deadlines:
    """The deadlines of the requests in flight on one event loop, each ``timeout`` seconds after its start."""

    def __init__(
        self, timeout: float, tick: float | None = None, clock: Callable[[], float] | None = None
    ) -> None:
        self.timeout = timeout
        self._clock = clock  # default: the running loop's time
        self.tick = tick if tick is not None else min(MAX_TICK, timeout / 10)
        self._due: dict[asyncio.Task, float] = {}
        self._expired: set[asyncio.Task] = set()
        self._sweep: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of the requests (one at a time)

    def start(self) -> asyncio.Task:
        """Give the current task its deadline; returns the task, for :meth:`expired` and :meth:`finish`."""
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        # current_task with the loop given: without it, asyncio asks the OS for the process id on every call
        task = asyncio.current_task(loop)
        assert task is not None, "a deadline belongs to a task"
        self._due[task] = (self._clock or loop.time)() + self.timeout
        if self._sweep is None:
            self._sweep = loop.call_later(self.tick, self._sweep_and_rearm, loop)
        return task

    def finish(self, task: asyncio.Task) -> None:
        """The request of ``task`` is over, however it ended."""
        self._due.pop(task, None)

    def expired(self, task: asyncio.Task) -> bool:
        """Whether the cancellation ``task`` is handling was its deadline's (then it is taken back).

        False for a cancellation from elsewhere, also when one came on top of the deadline's: that one goes on.
        """
        if task not in self._expired:
            return False
        self._expired.discard(task)
        return task.uncancel() == 0

    def close(self) -> None:
        """Stop sweeping (the requests still in flight keep no deadline)."""
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self._due.clear()

    def cancel_overdue(self, now: float) -> int:
        """Cancel the tasks whose deadline is ``now`` or earlier; how many."""
        overdue = [task for task, due in self._due.items() if due <= now]
        for task in overdue:
            del self._due[task]
            self._expired.add(task)
            task.cancel()
        return len(overdue)

    def _sweep_and_rearm(self, loop: asyncio.AbstractEventLoop) -> None:
        self.cancel_overdue((self._clock or loop.time)())
        self._sweep = loop.call_later(self.tick, self._sweep_and_rearm, loop) if self._due else None
