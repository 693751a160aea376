"""Many rows per ``INSERT`` statement: how the cache's writer (:mod:`distill.cache_writer`) inserts a group commit.

``executemany`` runs its statement once per row, and Python's ``sqlite3`` hands the GIL back around every step and
takes it again after. When the writer was a thread beside the event loop, each row cost both threads a GIL
hand-over; one statement of many rows took the GIL once for all of them (measured: some 6 us less CPU on the loop's
thread per answer at thousands of answers a second, issue 12). In the writer process it still saves a statement
step per row.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from itertools import chain
from typing import Any

ROW_GROUPS = (128, 32, 8, 1)  # rows per statement, largest first: few distinct statements for SQLite to cache


def insert_rows(db: sqlite3.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    """What ``db.executemany(sql, rows)`` does, for a one-row ``INSERT ... VALUES (?, ...)`` ``sql``, with many
    rows per statement (in order: a later row replaces an earlier one with the same key, as it would there)."""
    head, found, marks = sql.rpartition(" VALUES ")
    if not found or not marks.startswith("("):
        raise ValueError(f"not a one-row INSERT ... VALUES (...): {sql!r}")
    done = 0
    for size in ROW_GROUPS:
        if len(rows) - done < size:
            continue
        statement = f"{head} VALUES {', '.join([marks] * size)}"
        while len(rows) - done >= size:
            db.execute(statement, list(chain.from_iterable(rows[done : done + size])))
            done += size
