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
import dataclasses
import hashlib
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from aiohttp import web

from distill.errors import UsageError

from . import answers
from .knobs import TeacherKnobs

TOGETHER = "together"
OPENAI = "openai"
OPENAI_PREFIX = "/openai/v1"
TERMINAL = frozenset(("COMPLETED", "FAILED", "EXPIRED", "CANCELLED"))
ENDPOINTS = {TOGETHER: ("/v1/chat/completions",), OPENAI: ("/v1/chat/completions", "/v1/completions")}
FILE_PURPOSE = {TOGETHER: "batch-api", OPENAI: "batch"}
MAX_CUSTOM_ID = 64

_PARSERS = {"/v1/chat/completions": answers.parse_chat, "/v1/completions": answers.parse_completion}


class Teacher(Protocol):
    """What the batch service needs of the teacher it answers for: its knobs, and a place for the service."""

    knobs: TeacherKnobs
    batch: BatchService


@dataclass(frozen=True, slots=True)
class BatchKnobs:
    """How the fake Batch API behaves. ``BatchKnobs()`` finishes every batch at once with every answer."""

    validating_seconds: float = 0.0  # how long a new batch stays VALIDATING
    seconds_per_request: float = 0.0  # processing time of each line
    hold: bool = False  # batches stay IN_PROGRESS, nothing answered, until this is switched off
    max_requests: int = 50_000  # lines a batch file may hold (Together and OpenAI: 50,000)
    max_bytes: int = 100_000_000  # bytes a batch file may hold (Together 100 MB, OpenAI 200 MB)
    expire_after: int | None = None  # a batch answers at most this many lines, then ends EXPIRED
    fail_first: int = 0  # the first N submissions of every custom_id get a 500 error line

    def replace(self, **changes: Any) -> BatchKnobs:
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise UsageError(
                f"unknown batch knob(s): {', '.join(sorted(unknown))}; known: {', '.join(names)}"
            )
        return dataclasses.replace(self, **changes)


@dataclass(slots=True)
class StoredFile:
    id: str
    flavour: str
    filename: str
    purpose: str
    checksum: str = ""
    data: bytes | None = None
    created: float = field(default_factory=time.time)


@dataclass(slots=True)
class FakeBatch:
    id: str
    flavour: str
    endpoint: str
    input_file_id: str
    created: float = field(default_factory=time.time)
    status: str = "VALIDATING"
    cancel_requested: bool = False
    total: int = 0
    done: int = 0
    failed: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    error: str | None = None
    finished: float | None = None


@dataclass(slots=True)
class BatchStats:
    uploads: int = 0
    batches_created: int = 0
    batches_cancelled: int = 0
    requests_answered: int = 0
    submissions: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "uploads": self.uploads,
            "batches_created": self.batches_created,
            "batches_cancelled": self.batches_cancelled,
            "requests_answered": self.requests_answered,
            "submissions": dict(self.submissions),
        }


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
        stored = StoredFile(self.new_id("file"), flavour, filename, purpose, _sha256(data), data)
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


class BadRequest(Exception):
    """A request the fake API answers with 400; ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, headers=headers, content_type="application/json"
    )


def _bad(message: str, param: str | None = None, status: int = 400) -> web.Response:
    return _json(
        {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}, status
    )


def add_routes(app: web.Application, state: Teacher) -> BatchService:
    """Serve the batch endpoints of both flavours from ``app``; the service is also ``state.batch``."""
    service = BatchService(state)
    state.batch = service
    routes = _Routes(service, state)
    for prefix, flavour in (("/v1", TOGETHER), (OPENAI_PREFIX, OPENAI)):
        app.router.add_post(f"{prefix}/files", routes.guard(flavour, routes.upload))
        app.router.add_get(f"{prefix}/files/{{id}}", routes.guard(flavour, routes.retrieve_file))
        app.router.add_get(f"{prefix}/files/{{id}}/content", routes.guard(flavour, routes.file_content))
        app.router.add_post(f"{prefix}/batches", routes.guard(flavour, routes.create_batch))
        app.router.add_get(f"{prefix}/batches", routes.guard(flavour, routes.list_batches))
        app.router.add_get(f"{prefix}/batches/{{id}}", routes.guard(flavour, routes.retrieve_batch))
        app.router.add_post(f"{prefix}/batches/{{id}}/cancel", routes.guard(flavour, routes.cancel_batch))
    app.router.add_post("/v1/files/{id}/preprocess", routes.guard(TOGETHER, routes.preprocess))
    app.router.add_put("/batch-uploads/{id}", routes.receive_upload)
    app.router.add_get("/batch/stats", routes.get_stats)
    app.router.add_post("/batch/knobs", routes.post_knobs)

    async def close(_app: web.Application) -> None:
        await service.close()

    app.on_cleanup.append(close)
    return service


class _Routes:
    def __init__(self, service: BatchService, state: Teacher) -> None:
        self.service = service
        self.state = state

    def guard(self, flavour: str, handler):
        async def guarded(request: web.Request) -> web.StreamResponse:
            key = self.state.knobs.api_key
            if key is not None and request.headers.get("Authorization") != f"Bearer {key}":
                return _bad("invalid or missing API key", status=401)
            try:
                return await handler(request, flavour)
            except BadRequest as e:
                return _bad(str(e), e.param)

        return guarded

    def _file(self, request: web.Request, flavour: str) -> StoredFile:
        stored = self.service.files.get(request.match_info["id"])
        if stored is None or stored.flavour != flavour:
            raise web.HTTPNotFound(
                body=orjson.dumps({"error": {"message": "no such file"}}), content_type="application/json"
            )
        return stored

    def _batch(self, request: web.Request, flavour: str) -> FakeBatch:
        batch = self.service.batches.get(request.match_info["id"])
        if batch is None or batch.flavour != flavour:
            raise web.HTTPNotFound(
                body=orjson.dumps({"error": {"message": "no such batch"}}), content_type="application/json"
            )
        return batch

    async def upload(self, request: web.Request, flavour: str) -> web.Response:
        form = await request.post()
        purpose = form.get("purpose")
        if flavour == OPENAI:
            upload = form.get("file")
            if not isinstance(upload, web.FileField) or not isinstance(purpose, str):
                raise BadRequest("a multipart 'file' and a 'purpose' are required", "file")
            stored = self.service.store(OPENAI, upload.filename, purpose, upload.file.read())
            self.service.stats.uploads += 1
            return _json(self.service.file_json(stored))
        name, checksum = form.get("file_name"), form.get("checksum")
        if not all(isinstance(v, str) and v for v in (purpose, name, checksum)):
            raise BadRequest("form fields purpose, file_name, file_type and checksum are required")
        if form.get("file_type") != "jsonl":
            raise BadRequest("the fake takes file_type 'jsonl' only", "file_type")
        existing = next(
            (
                f
                for f in self.service.files.values()
                if (f.checksum, f.filename) == (checksum, name) and f.data is not None
            ),
            None,
        )
        if existing is not None:
            return _json({"file_id": existing.id, "message": "file already uploaded"}, status=409)
        stored = StoredFile(self.service.new_id("file"), TOGETHER, str(name), str(purpose), str(checksum))
        self.service.files[stored.id] = stored
        headers = {
            "Location": f"{request.scheme}://{request.host}/batch-uploads/{stored.id}",
            "X-Together-File-Id": stored.id,
        }
        return web.Response(status=302, headers=headers)

    async def receive_upload(self, request: web.Request) -> web.Response:
        stored = self.service.files.get(request.match_info["id"])
        if stored is None or stored.flavour != TOGETHER:
            return _bad("no upload started for this id", status=404)
        data = await request.read()
        if _sha256(data) != stored.checksum:
            return _bad("the uploaded bytes do not match the checksum")
        stored.data = data
        self.service.stats.uploads += 1
        return web.Response(status=200)

    async def preprocess(self, request: web.Request, flavour: str) -> web.Response:
        return _json(self.service.file_json(self._file(request, flavour)))

    async def retrieve_file(self, request: web.Request, flavour: str) -> web.Response:
        return _json(self.service.file_json(self._file(request, flavour)))

    async def file_content(self, request: web.Request, flavour: str) -> web.Response:
        stored = self._file(request, flavour)
        return web.Response(body=stored.data or b"", content_type="application/octet-stream")

    async def create_batch(self, request: web.Request, flavour: str) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise BadRequest("the body is not valid JSON") from None
        batch = self.service.create(flavour, body)
        data = self.service.batch_json(batch)
        return _json(data if flavour == OPENAI else {"job": data, "warning": None})

    async def list_batches(self, request: web.Request, flavour: str) -> web.Response:
        jobs = [self.service.batch_json(b) for b in self.service.batches.values() if b.flavour == flavour]
        if flavour == TOGETHER:
            return _json(jobs)
        first, last = (jobs[0]["id"], jobs[-1]["id"]) if jobs else (None, None)
        return _json({"object": "list", "data": jobs, "first_id": first, "last_id": last, "has_more": False})

    async def retrieve_batch(self, request: web.Request, flavour: str) -> web.Response:
        return _json(self.service.batch_json(self._batch(request, flavour)))

    async def cancel_batch(self, request: web.Request, flavour: str) -> web.Response:
        batch = self._batch(request, flavour)
        self.service.cancel(batch)
        return _json(self.service.batch_json(batch))

    async def get_stats(self, request: web.Request) -> web.Response:
        return _json(self.service.stats.to_dict())

    async def post_knobs(self, request: web.Request) -> web.Response:
        try:
            changes = orjson.loads(await request.read())
            if not isinstance(changes, dict):
                raise UsageError("POST /batch/knobs takes a JSON object of batch knob names")
            knobs = self.service.set_knobs(**changes)
        except (orjson.JSONDecodeError, UsageError, TypeError) as e:
            return _bad(str(e))
        return _json(dataclasses.asdict(knobs))
