"""distill.deadlines: one sweep cancels the requests past their deadline, and only those, and says which.

The sweeps here are called with a chosen ``now`` (the timer's own tick is an hour, so it never fires), so no test
depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio

import pytest

from distill.deadlines import MAX_TICK, Deadlines

HOUR = 3600.0


class Request:
    """A request in flight: a task that holds a deadline until ``release`` is set, and reports how it ended."""

    def __init__(self, deadlines: Deadlines) -> None:
        self.deadlines = deadlines
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> str:
        task = self.deadlines.start()
        self.started.set()
        try:
            await self.release.wait()
            return "answered"
        except asyncio.CancelledError:
            if self.deadlines.expired(task):
                return "timed out"
            raise
        finally:
            self.deadlines.finish(task)


async def started(deadlines: Deadlines, count: int = 1) -> list[Request]:
    requests = [Request(deadlines) for _ in range(count)]
    for request in requests:
        await request.started.wait()
    return requests


async def test_only_the_requests_past_their_deadline_are_cancelled_and_reported_as_timed_out():
    now = [100.0]
    deadlines = Deadlines(timeout=10.0, tick=HOUR, clock=lambda: now[0])
    (early,) = await started(deadlines)  # due at 110
    now[0] = 105.0
    (late,) = await started(deadlines)  # due at 115
    assert deadlines.cancel_overdue(109.9) == 0
    assert deadlines.cancel_overdue(110.0) == 1
    assert await early.task == "timed out"
    assert early.task.cancelling() == 0  # the deadline's cancellation was taken back
    assert not late.task.done()
    late.release.set()
    assert await late.task == "answered"
    deadlines.close()


async def test_a_finished_request_is_never_cancelled_and_the_sweep_stops_when_none_is_in_flight():
    deadlines = Deadlines(timeout=1.0, tick=HOUR, clock=lambda: 0.0)
    (request,) = await started(deadlines)
    request.release.set()
    assert await request.task == "answered"
    assert deadlines.cancel_overdue(HOUR) == 0
    deadlines._sweep_and_rearm(asyncio.get_running_loop())
    assert deadlines._sweep is None


async def test_a_cancellation_from_elsewhere_is_not_a_timeout():
    deadlines = Deadlines(timeout=HOUR, tick=HOUR)
    (request,) = await started(deadlines)
    request.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request.task
    deadlines.close()


async def test_a_cancellation_on_top_of_the_deadlines_goes_on():
    deadlines = Deadlines(timeout=1.0, tick=HOUR, clock=lambda: 0.0)
    (request,) = await started(deadlines)
    assert deadlines.cancel_overdue(1.0) == 1
    request.task.cancel()  # e.g. SIGINT stopping the run in the same turn
    with pytest.raises(asyncio.CancelledError):
        await request.task
    deadlines.close()


async def test_many_requests_share_one_sweep():
    deadlines = Deadlines(timeout=5.0, tick=HOUR, clock=lambda: 0.0)
    first = Request(deadlines)
    await first.started.wait()
    sweep = deadlines._sweep
    requests = [first, *await started(deadlines, 49)]
    assert sweep is not None and deadlines._sweep is sweep  # the first request armed it; the others share it
    assert deadlines.cancel_overdue(5.0) == 50
    assert [await r.task for r in requests] == ["timed out"] * 50
    deadlines.close()


def test_the_tick_is_a_tenth_of_the_timeout_and_at_most_a_second():
    assert Deadlines(0.3).tick == pytest.approx(0.03)
    assert Deadlines(600.0).tick == MAX_TICK
