"""The files API of the fake Together service: upload (with the SDK's redirect and checksum), list, retrieve,
delete, content and the server-side check of a file (:mod:`.rules`).

:class:`FileRoutes` holds the handlers; :class:`~.server.FakeTogether`, whose state they work on, is one.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Any

from aiohttp import web

from .clock import Clock
from .rules import validate_jsonl
from .store import (
    INVALID_MARKER,
    FakeFile,
    FakeJob,
    new_file_id,
)

PURPOSES = frozenset({"fine-tune", "eval", "batch-api", "calibration"})
FILE_TYPES = frozenset({"jsonl", "parquet", "csv"})
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def api_error(
    status: int, message: str, *, kind: str = "invalid_request_error", param: str | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return web.json_response(body, status=status)


def not_found(message: str) -> web.HTTPNotFound:
    """The 404 the API answers for an id it does not know."""
    return web.HTTPNotFound(
        text=f'{{"error": {{"message": "{message}", "type": "not_found"}}}}', content_type="application/json"
    )


class FakeState:
    """The state of :class:`~.server.FakeTogether` that its route handlers work on (set by its constructor)."""

    files: dict[str, FakeFile]
    jobs: dict[str, FakeJob]
    clock: Clock
    file_processing_seconds: float


class FileRoutes(FakeState):
    """The handlers of ``/v1/files`` and ``/uploads``, over a :class:`~.server.FakeTogether`'s files."""

    def _file_json(self, f: FakeFile) -> dict[str, Any]:
        status = f.status(self.clock.now(), self.file_processing_seconds)
        body: dict[str, Any] = {
            "id": f.id,
            "object": "file",
            "created_at": int(self.clock.epoch(f.created_at)),
            "filename": f.filename,
            "bytes": len(f.content) if f.content is not None else 0,
            "purpose": f.purpose,
            "FileType": f.file_type,
            "processing_status": status,
            "Processed": status in ("COMPLETED", "INVALID_FORMAT"),
            "LineCount": (f.report or {}).get("nlines", 0),
        }
        if status in ("COMPLETED", "INVALID_FORMAT") and f.report is not None:
            body["validation_report"] = f.report
        return body

    def _file(self, request: web.Request) -> FakeFile:
        f = self.files.get(request.match_info["id"])
        if f is None:
            raise not_found("file not found")
        return f

    async def create_upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        purpose, name = str(form.get("purpose", "")), str(form.get("file_name", ""))
        file_type, checksum = str(form.get("file_type", "")), str(form.get("checksum", ""))
        if purpose not in PURPOSES:
            return api_error(400, f"purpose must be one of {sorted(PURPOSES)}", param="purpose")
        if file_type not in FILE_TYPES or not name:
            return api_error(
                400, "file_name and a file_type of jsonl, parquet or csv are required", param="file_type"
            )
        if not _SHA256_HEX.match(checksum):
            return api_error(400, "checksum must be the file's sha256 in hex", param="checksum")
        for existing in self.files.values():
            if existing.checksum == checksum and existing.purpose == purpose and existing.content is not None:
                return web.json_response(
                    {"file_id": existing.id, "message": "a file with this checksum was already uploaded"},
                    status=409,
                )
        f = FakeFile(
            id=new_file_id(),
            filename=name,
            purpose=purpose,
            file_type=file_type,
            checksum=checksum,
            upload_token=secrets.token_urlsafe(16),
            created_at=self.clock.now(),
        )
        self.files[f.id] = f
        location = f"{request.url.origin()}/uploads/{f.id}?token={f.upload_token}"
        return web.Response(status=302, headers={"Location": location, "X-Together-File-Id": f.id})

    async def receive_upload(self, request: web.Request) -> web.Response:
        f = self._file(request)
        if request.query.get("token") != f.upload_token:
            return web.Response(status=403, text="bad upload token")
        content = await request.read()
        if hashlib.sha256(content).hexdigest() != f.checksum:
            return web.Response(status=400, text="the uploaded bytes do not match the announced checksum")
        f.content = content
        return web.Response(status=200)

    async def preprocess(self, request: web.Request) -> web.Response:
        f = self._file(request)
        if f.content is None:
            return api_error(400, f"file {f.id} has no content yet: PUT it to the upload URL first")
        if f.purpose == "fine-tune":
            f.report = self._check_content(f)
        f.processed_at = self.clock.now()
        return web.json_response(self._file_json(f))

    def _check_content(self, f: FakeFile) -> dict[str, Any]:
        assert f.content is not None
        if INVALID_MARKER in f.filename:
            report = {"valid": False, "file_id": f.id, "error_type": "INVALID_FORMAT"}
            report["error"] = (
                f"line 1: refused by the service (simulated: the file name contains {INVALID_MARKER!r})"
            )
            return report
        if f.file_type != "jsonl":
            report = {"valid": False, "file_id": f.id, "error_type": "INVALID_FORMAT"}
            report["error"] = "this local fake checks only .jsonl files"
            return report
        return validate_jsonl(f.content, f.id)

    async def list_files(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [self._file_json(f) for f in self.files.values()]}
        )

    async def retrieve_file(self, request: web.Request) -> web.Response:
        return web.json_response(self._file_json(self._file(request)))

    async def delete_file(self, request: web.Request) -> web.Response:
        f = self._file(request)
        del self.files[f.id]
        return web.json_response({"id": f.id, "object": "file", "deleted": True})

    async def file_content(self, request: web.Request) -> web.Response:
        f = self._file(request)
        return web.Response(body=f.content or b"", content_type="application/octet-stream")
