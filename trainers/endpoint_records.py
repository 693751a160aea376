"""The record of dedicated endpoints distill created, in the jobs database, so none is left running unseen.

An endpoint is recorded *before* it is created (with its name, which distill chooses) and marked as it moves:
created (its ids), ready, stopped, deleted. A process that owns an endpoint for its own use (``distill eval
--deploy``, the pipeline) records its pid: if it dies without tearing the endpoint down (``kill -9``, a power
cut), the next command finds a record whose owner is gone and deletes what was left (see
:meth:`EndpointStore.orphans`); ``distill deploy --cleanup`` deletes every endpoint still recorded as alive.

The table lives beside ``jobs`` and ``uploads`` in :func:`trainers.jobs.default_jobs_path`'s database.
"""

from __future__ import annotations

import math
import os
import socket
import sqlite3
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from pathlib import Path

from trainers.jobs import default_jobs_path, open_record

_SCHEMA = """
CREATE TABLE IF NOT EXISTS endpoints (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    base_url TEXT NOT NULL,
    project_id TEXT NOT NULL,
    name TEXT NOT NULL,
    model TEXT NOT NULL,
    hardware TEXT NOT NULL,
    price_cents_per_hour INTEGER NOT NULL,
    replicas INTEGER NOT NULL,
    owner TEXT NOT NULL,
    owner_host TEXT NOT NULL,
    owner_pid INTEGER,
    endpoint_id TEXT,
    deployment_id TEXT,
    inference_name TEXT,
    created_at REAL NOT NULL,
    ready_at REAL,
    stopped_at REAL,
    deleted_at REAL
);
"""


@dataclass(frozen=True, slots=True)
class EndpointRecord:
    """One endpoint distill created. ``owner_pid`` None: nobody tears it down but the user (``distill deploy``)."""

    id: int
    base_url: str
    project_id: str
    name: str
    model: str
    hardware: str
    price_cents_per_hour: int
    replicas: int
    owner: str
    owner_host: str
    owner_pid: int | None
    endpoint_id: str | None
    deployment_id: str | None
    inference_name: str | None
    created_at: float
    ready_at: float | None
    stopped_at: float | None
    deleted_at: float | None

    @property
    def alive(self) -> bool:
        return self.deleted_at is None

    def minutes(self, now: float) -> float:
        """Minutes it has been billed for: from its creation until stopped (or deleted, or now)."""
        end = self.stopped_at or self.deleted_at or now
        return max(0.0, end - self.created_at) / 60

    def billed_minutes(self, now: float) -> int:
        """Replica-minutes billed: each started minute of each replica."""
        return math.ceil(self.minutes(now)) * self.replicas

    def cost(self, now: float) -> float:
        """US dollars for the billed minutes at the hardware's list price."""
        return self.billed_minutes(now) * self.price_cents_per_hour / 100 / 60

    def usage(self, now: float) -> str:
        """``4.2 min on 1xnvidia-h100-80gb (5 replica-minutes billed), estimated $0.28``."""
        return (
            f"{self.minutes(now):.1f} min on {self.hardware} ({self.billed_minutes(now)} replica-minutes billed), "
            f"estimated ${self.cost(now):.2f}"
        )


def owner_is_gone(record: EndpointRecord) -> bool:
    """True when the process that owns ``record`` ran on this machine and no longer exists."""
    if record.owner_pid is None or record.owner_host != socket.gethostname():
        return False
    try:
        os.kill(record.owner_pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class EndpointStore:
    """The ``endpoints`` table; each call opens, commits and closes (safe across processes)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_jobs_path()

    def _connect(self) -> AbstractContextManager[sqlite3.Connection]:
        return open_record(self.path, lambda conn: conn.executescript(_SCHEMA))

    def add(
        self,
        *,
        base_url: str,
        project_id: str,
        name: str,
        model: str,
        hardware: str,
        price_cents_per_hour: int,
        replicas: int,
        owner: str,
        owner_pid: int | None,
        created_at: float | None = None,
    ) -> int:
        """Record an endpoint about to be created; returns its record id."""
        with self._connect() as conn:
            cursor = conn.execute(
                "INSERT INTO endpoints (base_url, project_id, name, model, hardware, price_cents_per_hour, "
                "replicas, owner, owner_host, owner_pid, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (base_url, project_id, name, model, hardware, price_cents_per_hour, replicas, owner,
                 socket.gethostname(), owner_pid, created_at if created_at is not None else time.time()),
            )  # fmt: skip
            return int(cursor.lastrowid or 0)

    def update(self, record_id: int, **values: object) -> None:
        """Set some columns of one record (``endpoint_id``, ``ready_at``, ``deleted_at``, ...)."""
        known = {f.name for f in fields(EndpointRecord)} - {"id"}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown endpoint record fields: {sorted(unknown)}")
        assignments = ", ".join(f"{name} = ?" for name in values)
        with self._connect() as conn:
            conn.execute(f"UPDATE endpoints SET {assignments} WHERE id = ?", (*values.values(), record_id))

    def get(self, record_id: int) -> EndpointRecord:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM endpoints WHERE id = ?", (record_id,)).fetchone()
        return EndpointRecord(**dict(row))

    def records(self, *, alive_only: bool = False) -> list[EndpointRecord]:
        """Every recorded endpoint, oldest first (none when there is no database yet: nothing is created)."""
        if not self.path.exists():
            return []
        query = (
            "SELECT * FROM endpoints" + (" WHERE deleted_at IS NULL" if alive_only else "") + " ORDER BY id"
        )
        with self._connect() as conn:
            return [EndpointRecord(**dict(row)) for row in conn.execute(query).fetchall()]

    def find(self, name: str) -> EndpointRecord | None:
        """The newest live record whose name, inference name or endpoint id is ``name``."""
        for record in reversed(self.records(alive_only=True)):
            if name in (record.name, record.inference_name, record.endpoint_id):
                return record
        return None

    def orphans(self) -> list[EndpointRecord]:
        """Live endpoints whose owning process is gone: left behind by a crash."""
        return [r for r in self.records(alive_only=True) if owner_is_gone(r)]
