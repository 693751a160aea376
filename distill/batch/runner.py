"""``distill run --batch``: the whole dataset through a provider's Batch API, into the same cache as a live run.

The run goes in waves. Each wave walks the run's conversations in the cache and writes the next request each
one needs (under ``--history teacher`` turn *k* of a conversation is written only once turn *k-1* is answered;
under ``original`` every turn goes in the first wave), each distinct request once, into input files split under
the provider's limits; uploads them, creates one batch per file, records every batch in the cache, polls until
each ends and stores its answers and permanent failures in the cache. Requests that failed transiently (429,
5xx) go into the next wave until they have failed ``--attempts`` times; requests an expired or cancelled batch
never reached go into the next wave too (they were not tried), unless ``--attempts`` waves in a row answered
nothing at all. A run that was interrupted follows the batches it recorded before it submits anything new.

It leaves in the cache what a live run leaves for ``distill view``: each wave marks the conversations the waves
before finished (with their tokens) or failed (with the request that failed them), so the viewer follows the run,
and skips them; each result line becomes an ``attempts`` row (:mod:`.attempts`); the run's end is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from distill import plan
from distill.cache import Cache
from distill.conversation import Conversation, Reject
from distill.cost import Budget, BudgetReached, expected_output_tokens
from distill.errors import TeacherError, TransientError, UsageError
from distill.requests import TeacherRequest, TeacherResponse, canonical_json
from distill.settings import RunSettings
from distill.shard import Shard
from distill.stats import RunStats
from distill.stored import encode_conversation

from .attempts import log_lines
from .ledger import Ledger, Row
from .lines import Part, PartWriter, parse_result, read_jsonl, rebuild_request
from .options import BatchOptions
from .provider import Provider, endpoint_for
from .tally import count_outcome, mark, positioned

STORE_CHUNK = 1000
YIELD_EVERY = 256


class BatchFailed(TeacherError):
    """The provider failed a whole batch (its input was refused, or the provider broke)."""


@dataclass(slots=True)
class Outcome:
    """What the requests of finished batches came to."""

    answered: int = 0
    failed: int = 0
    failed_transiently: int = 0
    unreached: int = 0

    @property
    def tried(self) -> int:
        return self.answered + self.failed + self.failed_transiently

    def add(self, other: Outcome) -> None:
        self.answered += other.answered
        self.failed += other.failed
        self.failed_transiently += other.failed_transiently
        self.unreached += other.unreached


class BatchRunner:
    """Answers a run's conversations through ``provider``; one instance per run."""

    def __init__(
        self,
        settings: RunSettings,
        cache: Cache,
        provider: Provider,
        options: BatchOptions,
        *,
        stats: RunStats | None = None,
        budget: Budget | None = None,
        shard: Shard | None = None,
        on_reject: Callable[[Reject], None] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.cache = cache
        self.provider = provider
        self.options = options
        self.stats = stats or RunStats()
        self.budget = budget
        self.shard = shard
        self.on_reject = on_reject
        self.workdir = (options.workdir or Path(f"{cache.path}.batches")).resolve()
        self._log = log or (lambda _line: None)
        self._failed_tries: Counter[str] = Counter()
        self._last_error: dict[str, tuple[str, int | None]] = {}
        self._stored = 0
        self._reserved: dict[str, float] = {}
        self.stopped_by_budget = False

    async def run(self, records: Iterable[Conversation | Reject], run_id: str, input_path: str) -> RunStats:
        """Store ``records`` as the run's input, then answer them batch by batch; returns the counters."""
        await self.cache.record_run(run_id, input_path, self.settings.request_identity())
        await self._store_input(records, run_id)
        if self.settings.retry_failed:
            await self.cache.forget_failures()
        self.workdir.mkdir(parents=True, exist_ok=True)
        ledger = Ledger(self.cache.path)
        try:
            self._remove_stale_parts(ledger)
            await self._reattach(ledger, run_id)
            wave = stalled = 0
            while not self.stopped_by_budget:
                wave += 1
                parts = await self._write_wave(ledger, run_id, wave)
                await self.cache.flush()
                if not parts:
                    break
                outcome = await self._follow(ledger, await self._submit(ledger, run_id, parts))
                stalled = stalled + 1 if outcome.unreached and not outcome.tried else 0
                if stalled >= self.settings.attempts:
                    raise BatchFailed(
                        f"{self.provider.name} ended {stalled} waves of batches in a row without reaching any "
                        "request (expired or cancelled); run the same command again later"
                    )
            await count_outcome(ledger, self.cache, run_id, self.settings, self.stats, self._stored)
            await self.cache.flush()
        finally:
            ledger.close()
            await self.cache.record_run_end(run_id)
        with contextlib.suppress(OSError):
            self.workdir.rmdir()  # only when empty: nothing left in flight
        return self.stats

    # -- the input -----------------------------------------------------------------------------------------

    async def _store_input(self, records: Iterable[Conversation | Reject], run_id: str) -> None:
        """Store the conversations as the engine does (positions in the whole input, so shards merge in order)."""
        position = 0
        rows: list[tuple[int, str, str, bytes]] = []
        for n, record in enumerate(records, 1):
            if isinstance(record, Reject):
                if self.shard is None or self.shard.owns_reject(record):
                    self.stats.rejects += 1
                    if self.on_reject:
                        self.on_reject(record)
            else:
                if self.shard is None or self.shard.owns(record.id):
                    rows.append((position, record.id, record.source, encode_conversation(record)))
                    self.stats.conversations_read += 1
                position += 1
            if len(rows) >= STORE_CHUNK:
                self._store_changed(run_id, rows)
                rows = []
            if n % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        self._store_changed(run_id, rows)
        await self.cache.drop_conversations_from(run_id, position)
        await self.cache.flush()

    def _store_changed(self, run_id: str, rows: list[tuple[int, str, str, bytes]]) -> None:
        """Store the conversations the cache does not hold as they are (an unchanged one keeps its marks)."""
        if rows and self.cache.had_input:
            stored = self.cache.stored_inputs(run_id, rows[0][0], rows[-1][0])
            rows = [row for row in rows if stored.get(row[0], (None,))[0] != row[3]]
        self.cache.add_conversations(run_id, rows)

    # -- waves -----------------------------------------------------------------------------------------------

    async def _write_wave(self, ledger: Ledger, run_id: str, wave: int) -> list[Part]:
        """Write the next request of every unfinished conversation into input parts."""
        stem = f"{run_id}-{time.strftime('%Y%m%d%H%M%S')}-w{wave}"
        writer = PartWriter(self.workdir, stem, self.provider.max_requests, self.provider.max_bytes)
        seen: set[str] = set()
        try:
            for n, (position, conversation, finished) in enumerate(positioned(ledger, run_id), 1):
                if finished:
                    continue
                wrote = False
                for request in self._next_requests(ledger, conversation):
                    wrote = True
                    if request.key in seen:
                        continue
                    seen.add(request.key)
                    if self._failed_tries[request.key] >= self.settings.attempts:
                        self._give_up(request.key)
                        continue
                    part = writer.add(request.key, self.provider.line(request))
                    if self.budget is not None:
                        part.estimate += self.budget.estimate(request, expected_output_tokens(self.settings))
                # nothing left to send: answered or failed by the waves before, marked as a live run marks it
                if not wrote:
                    mark(ledger, self.cache, run_id, position, conversation, self.settings)
                if n % YIELD_EVERY == 0:
                    await self.cache.room()
                    await asyncio.sleep(0)
        finally:
            parts = writer.close()
        return parts

    def _next_requests(self, ledger: Ledger, conversation: Conversation) -> Iterator[TeacherRequest]:
        """The requests of ``conversation`` that can be sent now and have no answer or failure yet."""
        turns = plan.turn_count(conversation, self.settings)
        if self.settings.history == "original":
            for k in range(turns):
                request = plan.request_for(conversation, self.settings, k)
                if ledger.answer(request.key) is None and ledger.failure(request.key) is None:
                    yield request
            return
        answers: list[str] = []
        for k in range(turns):
            request = plan.request_for(conversation, self.settings, k, answers)
            text = ledger.answer(request.key)
            if text is None:
                if ledger.failure(request.key) is None:
                    yield request
                return
            answers.append(text)

    def _give_up(self, key: str) -> None:
        reason, status = self._last_error.get(key, ("no answer", None))
        tries = self._failed_tries[key]
        self.cache.put_failure(
            key, f"no answer after {tries} failed batch submissions; last: {reason}", status
        )

    # -- submitting and following ----------------------------------------------------------------------------

    async def _submit(self, ledger: Ledger, run_id: str, parts: list[Part]) -> list[Row]:
        rows: list[Row] = []
        endpoint = endpoint_for(self.settings.api)
        for i, part in enumerate(parts):
            if self.budget is not None:
                try:
                    self.budget.reserve(part.estimate)
                except BudgetReached:
                    self._stop_for_budget(parts[i:])
                    break
                self._reserved[str(part.path)] = part.estimate
            file_id = await self.provider.upload(part.path)
            ledger.uploaded(part.path, run_id, self.provider.name, part.requests, file_id)
            batch_id = await self.provider.create(file_id, endpoint)
            ledger.submitted(str(part.path), batch_id)
            self.stats.requests_sent += part.requests
            self._log(f"batch {batch_id}: submitted {part.requests:,} requests ({part.bytes:,} bytes)")
            rows.append(
                Row(str(part.path), run_id, self.provider.name, part.requests, file_id, batch_id, "submitted")
            )
        return rows

    def _stop_for_budget(self, unsent: list[Part]) -> None:
        self.stopped_by_budget = True
        for part in unsent:
            part.path.unlink(missing_ok=True)
        assert self.budget is not None
        self._log(f"{self.budget.summary()}: the next batch would go over it, so no new batch is submitted")

    async def _reattach(self, ledger: Ledger, run_id: str) -> None:
        rows = ledger.open_rows(run_id)
        if not rows:
            return
        foreign = next((r for r in rows if r.provider != self.provider.name), None)
        if foreign is not None:
            raise UsageError(
                f"the cache has batches in flight at {foreign.provider} from an earlier run; run the same command "
                f"with --batch {foreign.provider} to collect them first"
            )
        self._log(f"re-attaching to {len(rows)} batch(es) in flight from an earlier run")
        follow: list[Row] = []
        for row in rows:
            if row.batch_id is None:
                batch_id = await self.provider.find(row.input_file_id or "")
                if batch_id is None:  # interrupted between upload and create: nothing to follow
                    ledger.close_row(row.part, "dropped")
                    Path(row.part).unlink(missing_ok=True)
                    continue
                ledger.submitted(row.part, batch_id)
                row = dataclasses.replace(row, batch_id=batch_id, status="submitted")
            follow.append(row)
        await self._follow(ledger, follow)

    async def _follow(self, ledger: Ledger, rows: list[Row]) -> Outcome:
        """Poll every batch of ``rows`` until it ends, collecting each as it does; what they came to."""
        outcome = Outcome()
        waiting = {row.part: row for row in rows}
        shown: dict[str, tuple[str, int]] = {}
        errors: Counter[str] = Counter()
        while waiting:
            for part, row in list(waiting.items()):
                try:
                    state = await self.provider.retrieve(row.batch_id or "")
                except TransientError as e:
                    errors[part] += 1
                    if errors[part] >= self.settings.attempts:
                        raise
                    self._log(f"batch {row.batch_id}: could not look it up ({e}); trying again")
                    continue
                errors[part] = 0
                seen = (state.status, int(state.progress or 0))
                if shown.get(part) != seen:
                    shown[part] = seen
                    self._log(f"batch {row.batch_id}: {state.status} {seen[1]}%")
                if state.terminal:
                    outcome.add(await self._collect(ledger, row, state))
                    del waiting[part]
            if waiting:
                await asyncio.sleep(self.options.poll_seconds)
        return outcome

    async def _collect(self, ledger: Ledger, row: Row, state) -> Outcome:
        """Store a finished batch's answers and permanent failures; remember the rest for the next wave."""
        if state.status == "failed":
            ledger.close_row(row.part, "failed")
            log_lines(self.cache, ledger, row, state, await self._requests_of(row), {})  # for the viewer
            await self.cache.flush()
            raise BatchFailed(
                f"{self.provider.name} failed batch {row.batch_id} ({row.requests:,} requests): "
                f"{state.message or 'no reason given'}; fix the cause and run the same command again to send "
                "its requests again"
            )
        requests = await self._requests_of(row)
        results = await self._results(state, requests)
        log_lines(self.cache, ledger, row, state, requests, results)
        outcome = Outcome()
        for key, request in requests.items():
            result = results.get(key)
            if result is None or (result.response is None and result.status is None and result.transient):
                reason = (
                    result.reason if result is not None else f"not answered: the batch ended {state.status}"
                )
                self._last_error[key] = (reason, None)
                outcome.unreached += 1
            elif result.response is not None:
                self._store_answer(request, result.response)
                outcome.answered += 1
            elif result.transient:
                self._last_error[key] = (result.reason, result.status)
                self._failed_tries[key] += 1
                outcome.failed_transiently += 1
            else:
                self.cache.put_failure(key, result.reason, result.status)
                outcome.failed += 1
        await self.cache.flush()
        if self.budget is not None:
            self.budget.release(self._reserved.pop(row.part, 0.0))
        ledger.close_row(row.part, "collected")
        Path(row.part).unlink(missing_ok=True)
        self._log(
            f"batch {row.batch_id}: collected {outcome.answered:,} answers, {outcome.failed:,} failed for good, "
            f"{outcome.failed_transiently + outcome.unreached:,} to send again"
        )
        return outcome

    async def _requests_of(self, row: Row) -> dict[str, TeacherRequest]:
        """The requests a batch carried: from the local input part, else from the provider's copy of it."""
        path = Path(row.part)
        downloaded = False
        if not path.exists():
            path = self.workdir / f"{_safe(row.input_file_id or 'input')}.input.jsonl"
            await self.provider.download(row.input_file_id or "", path)
            downloaded = True
        try:
            return {r.key: r for r in map(rebuild_request, read_jsonl(path))}
        finally:
            if downloaded:
                path.unlink(missing_ok=True)

    async def _results(self, state, requests: dict[str, TeacherRequest]) -> dict:
        results: dict = {}
        for file_id in (state.output_file_id, state.error_file_id):
            if not file_id:
                continue
            path = self.workdir / f"{_safe(file_id)}.result.jsonl"
            await self.provider.download(file_id, path)
            try:
                for obj in read_jsonl(path):
                    result = parse_result(obj, self.settings.api)
                    if result.custom_id in requests and (
                        result.response is not None or result.custom_id not in results
                    ):
                        results[result.custom_id] = result
            finally:
                path.unlink(missing_ok=True)
        return results

    def _store_answer(self, request: TeacherRequest, response: TeacherResponse) -> None:
        self.cache.put(request.key, canonical_json(request.identity()), response)
        self._stored += 1
        self.stats.prompt_tokens += response.prompt_tokens or 0
        self.stats.completion_tokens += response.completion_tokens or 0
        self.stats.finished_length += response.finish_reason == "length"
        if self.budget is not None:
            self.budget.charge_answer(request, response)

    def _remove_stale_parts(self, ledger: Ledger) -> None:
        """Input parts of an earlier run that never became a batch (its requests are written again)."""
        keep = {Path(r.part).name for r in ledger.open_rows()}
        for path in self.workdir.glob("*.jsonl"):
            if path.name not in keep:
                path.unlink(missing_ok=True)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
