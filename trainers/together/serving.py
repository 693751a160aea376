"""An endpoint for the length of one job: deploy, use, and always tear down (done, error, Ctrl-C or SIGTERM).

``with serving(deployer, request) as endpoint:`` deploys (after deleting what crashed runs left behind), yields
the running endpoint's record and, however the block ends, stops and deletes it with Ctrl-C and SIGTERM held off
until that is done. The record names this process as its owner: if it is killed outright (``kill -9``), the next
``serving`` or ``distill deploy --cleanup`` deletes the endpoint.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from trainers.endpoint_records import EndpointRecord

from .deploy import Deployer, DeployRequest, signals_held


@dataclass(slots=True)
class Usage:
    """What an endpoint cost: filled in once it is torn down."""

    name: str = ""
    hardware: str = ""
    minutes: float = 0.0
    billed_minutes: int = 0
    cost: float = 0.0
    summary: str = ""

    def line(self) -> str:
        return f"endpoint {self.name}: {self.summary}"

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "hardware": self.hardware,
            "minutes": round(self.minutes, 2),
            "billed_replica_minutes": self.billed_minutes,
            "estimated_cost_usd": round(self.cost, 2),
        }


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt for the block, so ``finally`` clauses run. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def serving(
    deployer: Deployer, request: DeployRequest, *, owner: str = "eval"
) -> Iterator[tuple[EndpointRecord, Usage]]:
    """Deploy ``request`` for the block and tear it down after, whatever happens; yields the endpoint and the
    :class:`Usage` that is filled in on the way out."""
    usage = Usage()
    with sigterm_as_interrupt():
        deployer.cleanup(orphans_only=True)
        record = deployer.deploy(request, owner=owner, owner_pid=os.getpid())
        try:
            yield record, usage
        finally:
            with signals_held():
                final = deployer.teardown(deployer.store.get(record.id))
            now = deployer.now()
            usage.name, usage.hardware, usage.summary = (
                final.inference_name or final.name,
                final.hardware,
                final.usage(now),
            )
            usage.minutes, usage.billed_minutes, usage.cost = (
                final.minutes(now),
                final.billed_minutes(now),
                final.cost(now),
            )
