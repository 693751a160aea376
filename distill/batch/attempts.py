"""What a finished batch's result files say of each request, recorded as the viewer's ``attempts`` rows.

A live run records every HTTP attempt with its time and latency; a Batch API gives per request only a status
(or an error, or nothing when the batch ended before reaching it) and the answer's usage. So each request of a
batch gets one row: dated when distill uploaded the batch, with the batch's turnaround as distill saw it
(uploaded to collected) in place of a latency, and the batch id, which tells the viewer to say so.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from distill.cache import Cache

from .ledger import Ledger, Row
from .lines import Result
from .provider import BatchState


def log_lines(
    cache: Cache, ledger: Ledger, row: Row, state: BatchState, keys: Iterable[str], results: dict[str, Result]
) -> None:
    """Queue one attempt row per request of the batch ``row`` (written by the cache's next commit)."""
    now = time.time()
    uploaded = ledger.uploaded_at(row.part) or now
    batch_id = row.batch_id or state.id
    for key in keys:
        status, error = line_outcome(results.get(key), state.status)
        cache.log_batch_line(key, batch_id, uploaded, max(0.0, now - uploaded), status, error)


def line_outcome(result: Result | None, batch_status: str) -> tuple[int | None, str | None]:
    """(HTTP status, or None with the reason there is none) of one request's result line."""
    if result is None:
        return None, f"no result line (batch {batch_status})"
    if result.response is not None:
        return 200, None
    if result.status is not None:
        return result.status, None
    return None, f"not reached (batch {batch_status})" if result.transient else result.reason[:200]
