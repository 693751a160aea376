"""The routes of the local teacher's batch endpoints (Together's under ``/v1``, OpenAI's under ``/openai/v1``).

What each endpoint does is described in :mod:`.batch`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
from aiohttp import web

from distill.errors import UsageError

from .batch import BatchService
from .batch_state import (
    OPENAI,
    OPENAI_PREFIX,
    TOGETHER,
    BadRequest,
    FakeBatch,
    StoredFile,
    Teacher,
    sha256_hex,
)


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
        return _found(self.service.files, request, flavour, "file")

    def _batch(self, request: web.Request, flavour: str) -> FakeBatch:
        return _found(self.service.batches, request, flavour, "batch")

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
        if sha256_hex(data) != stored.checksum:
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


def _found(table: dict[str, Any], request: web.Request, flavour: str, what: str) -> Any:
    """The ``what`` the path's ``{id}`` names in ``table``, if it belongs to ``flavour``'s API; else a 404."""
    item = table.get(request.match_info["id"])
    if item is None or item.flavour != flavour:
        raise web.HTTPNotFound(
            body=orjson.dumps({"error": {"message": f"no such {what}"}}), content_type="application/json"
        )
    return item
