"""Batch endpoints of the local teacher: the Files and Batches APIs of Together (under ``/v1``) and of OpenAI
(under ``/openai/v1``), answering every line of a batch exactly as ``POST /v1/chat/completions`` would.

Together, as the ``together`` 3.x SDK calls it (its base URL is the server root, :attr:`TeacherServer.root_url`):

- ``POST /v1/files`` (form fields ``purpose``, ``file_name``, ``file_type``, ``checksum``) answers 302 with
  ``Location`` and ``X-Together-File-Id`` (409 ``{"file_id"}`` when that file, same name and checksum, was
  uploaded already);
  ``PUT /batch-uploads/{id}`` takes the bytes; ``POST /v1/files/{id}/preprocess``; ``GET /v1/files/{id}``;
  ``GET /v1/files/{id}/content``;
- ``POST /v1/batches`` ``{"endpoint", "input_file_id", "completion_window"}`` -> ``{"job": {...}, "warning"}``;
  ``GET /v1/batches`` (a bare array); ``GET /v1/batches/{id}``; ``POST /v1/batches/{id}/cancel``. Statuses
  ``VALIDATING, IN_PROGRESS, COMPLETED, FAILED, EXPIRED, CANCELLED``; only ``/v1/chat/completions`` batches.

OpenAI, as the ``openai`` SDK calls it with ``base_url=ROOT/openai/v1``: ``POST /files`` (multipart ``file``,
``purpose=batch``), ``GET /files/{id}``, ``GET /files/{id}/content``, ``POST /batches`` (lines carry ``method``
and ``url``; ``/v1/chat/completions`` or ``/v1/completions``), ``GET /batches`` (a list page),
``GET /batches/{id}``, ``POST /batches/{id}/cancel``; lower-case statuses and ``request_counts``.

Result lines, in no particular order: the output file holds
``{"id", "custom_id", "response": {"status_code": 200, "request_id", "body": <chat.completion>}, "error": null}``,
the error file ``{..., "response": {"status_code": S, "body": {"error": {...}}}, "error": null}`` for a request
the API refused or failed and, on OpenAI only, ``{"custom_id", "response": null, "error": {"code":
"batch_expired" | "batch_cancelled", "message"}}`` for a request an expired or cancelled batch never reached
(Together leaves those out of both files). Together does not document its error-line shape; the fake uses
OpenAI's and distill's reader takes either.

:class:`BatchKnobs` shape it (``server.state.batch.set_knobs(...)`` in-process, ``POST /batch/knobs`` from
another process); ``GET /batch/stats`` counts uploads, batches and how often each ``custom_id`` was submitted.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from . import answers
from .batch_state import (
    ENDPOINTS,
    FILE_PURPOSE,
    MAX_CUSTOM_ID,
    OPENAI,
    TERMINAL,
    BadRequest,
    BatchKnobs,
    BatchStats,
    FakeBatch,
    StoredFile,
    Teacher,
    sha256_hex,
)

_PARSERS = {"/v1/chat/completions": answers.parse_chat, "/v1/completions": answers.parse_completion}


class BatchService:
    """The files and batches the fake holds, and the tasks that work the batches off."""

    def __init__(self, teacher: Teacher, knobs: BatchKnobs | None = None) -> None:
        self.teacher = teacher
        self.knobs = knobs or BatchKnobs()
        self.stats = BatchStats()
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, FakeBatch] = {}
        self._tasks: set[asyncio.Task] = set()
        self._ids = itertools.count(1)

    def set_knobs(self, **changes: Any) -> BatchKnobs:
        self.knobs = self.knobs.replace(**changes)
        return self.knobs

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids):06d}-{time.time_ns() % 1_000_000:06d}"

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- files ---------------------------------------------------------------------------------------------

    def store(self, flavour: str, filename: str, purpose: str, data: bytes) -> StoredFile:
        stored = StoredFile(self.new_id("file"), flavour, filename, purpose, sha256_hex(data), data)
        self.files[stored.id] = stored
        return stored

    def file_json(self, f: StoredFile) -> dict[str, Any]:
        size = len(f.data) if f.data is not None else 0
        if f.flavour == OPENAI:
            return {
                "id": f.id,
                "object": "file",
                "bytes": size,
                "created_at": int(f.created),
                "filename": f.filename,
                "purpose": f.purpose,
                "status": "processed",
            }
        return {
            "id": f.id,
            "object": "file",
            "created_at": int(f.created),
            "filename": f.filename,
            "bytes": size,
            "purpose": f.purpose,
            "FileType": "jsonl",
            "processing_status": "COMPLETED" if f.data is not None else "PENDING",
            "Processed": f.data is not None,
            "LineCount": f.data.count(b"\n") if f.data else 0,
        }

    # -- batches -------------------------------------------------------------------------------------------

    def create(self, flavour: str, body: Any) -> FakeBatch:
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        endpoint, file_id = body.get("endpoint"), body.get("input_file_id")
        if endpoint not in ENDPOINTS[flavour]:
            raise BadRequest(f"endpoint must be one of {', '.join(ENDPOINTS[flavour])}", "endpoint")
        stored = self.files.get(file_id) if isinstance(file_id, str) else None
        if stored is None or stored.flavour != flavour or stored.data is None:
            raise BadRequest(f"no uploaded file {file_id!r}", "input_file_id")
        if stored.purpose != FILE_PURPOSE[flavour]:
            raise BadRequest(f"the input file's purpose must be {FILE_PURPOSE[flavour]!r}", "input_file_id")
        if flavour == OPENAI and body.get("completion_window") != "24h":
            raise BadRequest("completion_window must be '24h'", "completion_window")
        batch = FakeBatch(self.new_id("batch"), flavour, endpoint, file_id)
        self.batches[batch.id] = batch
        self.stats.batches_created += 1
        task = asyncio.get_running_loop().create_task(self._work(batch, stored.data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return batch

    def cancel(self, batch: FakeBatch) -> None:
        if batch.status not in TERMINAL:
            batch.cancel_requested = True
            self.stats.batches_cancelled += 1

    async def _work(self, batch: FakeBatch, data: bytes) -> None:
        await asyncio.sleep(self.knobs.validating_seconds)
        try:
            lines = self._validate(batch, data)
        except BadRequest as e:
            batch.status, batch.error, batch.finished = "FAILED", str(e), time.time()
            return
        batch.status, batch.total = "IN_PROGRESS", len(lines)
        outputs: list[bytes] = []
        errors: list[bytes] = []
        reached = 0
        for line in lines:
            while self.knobs.hold and not batch.cancel_requested:
                await asyncio.sleep(0.01)
            expire_after = self.knobs.expire_after
            if batch.cancel_requested or (expire_after is not None and reached >= expire_after):
                break
            ok, result = self._answer(batch, line)
            (outputs if ok else errors).append(result)
            reached += 1
            batch.done += ok
            batch.failed += not ok
            if self.knobs.seconds_per_request:
                await asyncio.sleep(self.knobs.seconds_per_request)
            elif reached % 256 == 0:
                await asyncio.sleep(0)
        ending = "CANCELLED" if batch.cancel_requested else "EXPIRED" if reached < len(lines) else "COMPLETED"
        if batch.flavour == OPENAI:
            code = "batch_cancelled" if ending == "CANCELLED" else "batch_expired"
            errors.extend(_unreached_line(line["custom_id"], code) for line in lines[reached:])
        purpose = "batch_output" if batch.flavour == OPENAI else "batch-api"
        if outputs:
            batch.output_file_id = self.store(
                batch.flavour, f"{batch.id}_output.jsonl", purpose, b"".join(outputs)
            ).id
        if errors:
            batch.error_file_id = self.store(
                batch.flavour, f"{batch.id}_errors.jsonl", purpose, b"".join(errors)
            ).id
        batch.status, batch.finished = ending, time.time()

    def _validate(self, batch: FakeBatch, data: bytes) -> list[dict[str, Any]]:
        if len(data) > self.knobs.max_bytes:
            raise BadRequest(
                f"the input file has {len(data):,} bytes, over the limit of {self.knobs.max_bytes:,}"
            )
        lines: list[dict[str, Any]] = []
        seen: set[str] = set()
        for number, raw in enumerate(data.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise BadRequest(f"line {number} is not JSON") from None
            custom_id = line.get("custom_id") if isinstance(line, dict) else None
            if not isinstance(custom_id, str) or not 0 < len(custom_id) <= MAX_CUSTOM_ID:
                raise BadRequest(
                    f"line {number}: custom_id must be a string of 1 to {MAX_CUSTOM_ID} characters"
                )
            if custom_id in seen:
                raise BadRequest(f"line {number}: custom_id {custom_id!r} appears twice")
            if not isinstance(line.get("body"), dict):
                raise BadRequest(f"line {number}: body must be an object")
            if batch.flavour == OPENAI and (
                line.get("method") != "POST" or line.get("url") != batch.endpoint
            ):
                raise BadRequest(f"line {number}: method must be POST and url {batch.endpoint}")
            seen.add(custom_id)
            lines.append(line)
        if not lines:
            raise BadRequest("the input file holds no requests")
        if len(lines) > self.knobs.max_requests:
            raise BadRequest(
                f"the input file has {len(lines):,} requests, over the limit of {self.knobs.max_requests:,}"
            )
        return lines

    def _answer(self, batch: FakeBatch, line: dict[str, Any]) -> tuple[bool, bytes]:
        custom_id, body = line["custom_id"], line["body"]
        self.stats.submissions[custom_id] += 1
        knobs = self.teacher.knobs
        try:
            parsed = _PARSERS[batch.endpoint](body, knobs.token_counter)
        except answers.InvalidRequest as e:
            return False, _error_line(custom_id, 400, str(e), "invalid_request_error")
        if knobs.permanent_marker is not None and knobs.permanent_marker in parsed.last_user:
            message = f"the request contains the marker {knobs.permanent_marker!r} and is refused for good"
            return False, _error_line(custom_id, knobs.permanent_status, message, "invalid_request_error")
        if self.stats.submissions[custom_id] <= self.knobs.fail_first:
            return False, _error_line(
                custom_id, 500, "internal server error (fail_first knob)", "server_error"
            )
        completion = answers.complete(parsed, knobs.answer_words, knobs.token_counter)
        self.stats.requests_answered += 1
        body_json = answers.answer_json(parsed, completion, answers.request_hash(body))
        return True, _line(
            custom_id, {"status_code": 200, "request_id": f"req-{custom_id[:16]}", "body": body_json}
        )

    def batch_json(self, batch: FakeBatch) -> dict[str, Any]:
        if batch.flavour == OPENAI:
            return self._openai_batch_json(batch)
        progress = 100.0 * (batch.done + batch.failed) / batch.total if batch.total else 0.0
        return {
            "id": batch.id,
            "user_id": "fake-user",
            "input_file_id": batch.input_file_id,
            "file_size_bytes": len(self.files[batch.input_file_id].data or b""),
            "status": batch.status,
            "job_deadline": _iso(batch.created + 24 * 3600),
            "created_at": _iso(batch.created),
            "endpoint": batch.endpoint,
            "progress": progress,
            "model_id": None,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "error": batch.error,
            "completed_at": _iso(batch.finished) if batch.finished else None,
        }

    def _openai_batch_json(self, batch: FakeBatch) -> dict[str, Any]:
        status = batch.status.lower()
        if batch.cancel_requested and batch.status not in TERMINAL:
            status = "cancelling"
        errors = None
        if batch.error:
            errors = {
                "object": "list",
                "data": [{"code": "invalid_file", "message": batch.error, "line": None}],
            }
        finished = int(batch.finished) if batch.finished else None
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": batch.endpoint,
            "errors": errors,
            "input_file_id": batch.input_file_id,
            "completion_window": "24h",
            "status": status,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "created_at": int(batch.created),
            "expires_at": int(batch.created + 24 * 3600),
            "completed_at": finished if status == "completed" else None,
            "failed_at": finished if status == "failed" else None,
            "expired_at": finished if status == "expired" else None,
            "cancelled_at": finished if status == "cancelled" else None,
            "request_counts": {"total": batch.total, "completed": batch.done, "failed": batch.failed},
            "metadata": None,
        }


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _line(custom_id: str, response: dict[str, Any] | None, error: dict[str, Any] | None = None) -> bytes:
    record = {
        "id": f"batch_req_{custom_id[:24]}",
        "custom_id": custom_id,
        "response": response,
        "error": error,
    }
    return orjson.dumps(record) + b"\n"


def _error_line(custom_id: str, status: int, message: str, kind: str) -> bytes:
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return _line(custom_id, {"status_code": status, "request_id": f"req-{custom_id[:16]}", "body": body})


def _unreached_line(custom_id: str, code: str) -> bytes:
    message = "This request could not be executed before the batch ended (expired or cancelled)."
    return _line(custom_id, None, {"code": code, "message": message})
