"""``distill run --dry-run``: read the input as the run would, estimate what it will send and cost, print the bill.

Nothing is sent. The counting is :func:`distill.cost.estimate`; answers already in the cache are free.
"""

from __future__ import annotations

import sys
from typing import TextIO

from formats.readers import ReaderOptions, open_reader

from .cache import connect_readonly
from .conversation import Reject, limited
from .cost import BATCH_DISCOUNT, Estimate, Lookup, Price, estimate
from .errors import CacheError
from .requests import TeacherResponse
from .runner import RunJob


def dry_run(job: RunJob, price: Price | None, stream: TextIO = sys.stdout) -> Estimate:
    """Read ``job``'s input as the run would (``--limit``, ``--shard``), estimate, print the bill; send nothing."""
    reader = open_reader(
        job.input,
        job.input_format,
        ReaderOptions(system_prompt=job.settings.system_prompt, extra=dict(job.reader_options)),
    )
    records = limited(reader.read(job.input), job.limit)
    if job.shard is not None:
        shard = job.shard
        records = (
            r for r in records if (shard.owns_reject(r) if isinstance(r, Reject) else shard.owns(r.id))
        )
    conn, note = _open_cache(job)
    try:
        lookup = _cache_lookup(conn) if conn is not None else None
        result = estimate(records, job.settings, lookup)
    finally:
        if conn is not None:
            conn.close()
    print(format_estimate(result, job, price, note), file=stream)
    return result


def _open_cache(job: RunJob):
    if not job.cache.exists():
        return None, "no cache yet: every request is priced"
    try:
        return connect_readonly(job.cache), f"answers already in {job.cache} are free"
    except CacheError as e:
        return None, f"cache not read ({e}): every request is priced"


def _cache_lookup(conn) -> Lookup:
    def lookup(key: str) -> TeacherResponse | None:
        row = conn.execute(
            "SELECT text, finish_reason, prompt_tokens, completion_tokens FROM responses WHERE key = ?",
            (key,),
        ).fetchone()
        return TeacherResponse(*row) if row is not None else None

    return lookup


def format_estimate(result: Estimate, job: RunJob, price: Price | None, cache_note: str) -> str:
    """The dry run's report, one figure a line."""
    settings = job.settings
    shard = f", shard {job.shard}" if job.shard is not None else ""
    lines = [
        f"dry run: nothing was sent ({job.input}{shard}; model {settings.model}; history {settings.history})",
        f"conversations       {result.conversations:>14,}   ({result.rejects:,} input records rejected)",
        f"requests (turns)    {result.requests:>14,}   ({result.cached_requests:,} already answered; "
        f"{cache_note})",
        f"prompt tokens       {result.prompt_tokens:>14,}   (each request's whole history counted)",
        f"output tokens       {result.output_tokens:>14,}   ({result.expected_output:,} expected a request; "
        "--expected-output-tokens)",
    ]
    if result.estimated_history_answers:
        lines.append(
            f"  of the prompt tokens, {result.estimated_history_answers:,} teacher answers in the history are not "
            f"known yet and count {result.expected_output:,} tokens each"
        )
    if price is None:
        lines.append(
            f"cost                unknown: no default price for {settings.model!r}; pass --price-in and "
            "--price-out (US dollars per million tokens)"
        )
        return "\n".join(lines)
    lines.append(
        f"price               ${price.input:.2f} in, ${price.output:.2f} out per million tokens ({price.source})"
    )
    discounted = result.cost(price, BATCH_DISCOUNT)
    lines.append(
        f"cost                {_dollars(result.cost(price)):>14}   (with --batch: {_dollars(discounted)}, "
        f"{BATCH_DISCOUNT:.0%} of list price)"
    )
    worst = result.worst_cost(price)
    if worst is not None:
        lines.append(
            f"worst case          {_dollars(worst):>14}   (every answer {result.max_tokens:,} tokens, --max-tokens)"
        )
    return "\n".join(lines)


def _dollars(amount: float) -> str:
    return f"${amount:,.2f}" if amount >= 0.01 or amount == 0 else f"${amount:.4f}"
