"""A local fake of the Together files and fine-tuning API (aiohttp), faithful to what the ``together`` SDK sends.

Run it in-process (``async with FakeTogether() as fake``), in a background thread for synchronous callers
(``with FakeTogether().in_thread() as fake``), or as a process: ``python -m distill.servers.together --port 0
--port-file F``. Point the SDK at ``fake.url`` (``TOGETHER_BASE_URL`` or ``Together(base_url=...)``).

It checks the bearer key (any non-empty key unless ``api_keys`` is given) and never logs or returns it; the W&B
key of a job body is kept in memory only (``create_bodies``, for tests) and never echoed. ``calls`` lists every
(method, path) it served, so a test can count uploads and job creations.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from . import endpoint_routes
from .checkpoints import resolve_checkpoint
from .clock import Clock
from .endpoints import EndpointState
from .limits import BadRequest, check_job_body, model_limits
from .rules import validate_jsonl
from .store import (
    FAIL_MARKER,
    FAKE_USER,
    INVALID_MARKER,
    TERMINAL,
    FakeFile,
    FakeJob,
    cancel_schedule,
    job_schedule,
    new_file_id,
    new_job_id,
    output_model_name,
)

PURPOSES = frozenset({"fine-tune", "eval", "batch-api", "calibration"})
FILE_TYPES = frozenset({"jsonl", "parquet", "csv"})
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# The fake's price: dollars per million trained tokens, about what an 8B LoRA job costs.
PRICE_PER_MILLION_TOKENS = 0.48

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(
    status: int, message: str, *, kind: str = "invalid_request_error", param: str | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return web.json_response(body, status=status)


def _is_full(body: dict[str, Any]) -> bool:
    return (body.get("training_type") or {}).get("type") == "Full"


class FakeTogether:
    """The fake service. Knobs: ``seconds_per_state`` (how long a job stays pending, queued and running),
    ``clock`` (a :class:`~distill.servers.together.clock.ManualClock` lets a test move time), ``api_keys`` (keys
    accepted; None accepts any), ``models`` (base models offered; None offers any), ``error_models`` (base
    models whose jobs end in ``error``, as does any model or training file named with ``fake-error``) and
    ``file_processing_seconds`` (how long an upload's server-side check takes). An upload whose file name
    contains ``fake-invalid`` fails the server-side check whatever it holds.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seconds_per_state: float = 0.2,
        clock: Clock | None = None,
        api_keys: set[str] | None = None,
        models: set[str] | None = None,
        error_models: set[str] | None = None,
        file_processing_seconds: float = 0.0,
        inference_seconds: float = 0.0,
    ) -> None:
        self.host = host
        self.port = port
        self.seconds_per_state = seconds_per_state
        self.clock = clock or Clock()
        self.api_keys = api_keys
        self.models = models
        self.error_models = error_models or set()
        self.file_processing_seconds = file_processing_seconds
        self.files: dict[str, FakeFile] = {}
        self.jobs: dict[str, FakeJob] = {}
        self.calls: list[tuple[str, str]] = []
        self.create_bodies: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        # dedicated endpoints (endpoint_routes.py): provisioning and stopping take one state's time each
        self.endpoint_state = EndpointState(
            self.clock, seconds_to_ready=seconds_per_state, seconds_to_stop=seconds_per_state
        )
        self.inference_seconds = inference_seconds

    @property
    def url(self) -> str:
        """The base URL to give the SDK (no ``/v1``: the 3.x SDK adds it)."""
        return f"http://{self.host}:{self.port}"

    def count(self, method: str, path: str) -> int:
        """How many times ``method path`` was served."""
        return sum(1 for call in self.calls if call == (method, path))

    # lifecycle

    async def __aenter__(self) -> FakeTogether:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @contextmanager
    def in_thread(self) -> Iterator[FakeTogether]:
        """Serve from a background thread's event loop, for synchronous callers such as the SDK's client."""
        loop = asyncio.new_event_loop()
        started = threading.Event()
        thread = threading.Thread(target=self._serve_forever, args=(loop, started), daemon=True)
        thread.start()
        started.wait(timeout=10)
        try:
            yield self
        finally:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()

    def _serve_forever(self, loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(self.start())
        started.set()
        loop.run_forever()

    # the application

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._record, self._authenticate, endpoint_routes.api_errors],
            client_max_size=1 << 30,
        )
        app.router.add_post("/v1/files", self.create_upload)
        app.router.add_get("/v1/files", self.list_files)
        app.router.add_put("/uploads/{id}", self.receive_upload)
        app.router.add_post("/v1/files/{id}/preprocess", self.preprocess)
        app.router.add_get("/v1/files/{id}", self.retrieve_file)
        app.router.add_delete("/v1/files/{id}", self.delete_file)
        app.router.add_get("/v1/files/{id}/content", self.file_content)
        app.router.add_get("/v1/fine-tunes/models/limits", self.limits)
        app.router.add_post("/v1/fine-tunes/estimate-price", self.estimate_price)
        app.router.add_post("/v1/fine-tunes", self.create_job)
        app.router.add_get("/v1/fine-tunes", self.list_jobs)
        app.router.add_get("/v1/fine-tunes/{id}", self.retrieve_job)
        app.router.add_post("/v1/fine-tunes/{id}/cancel", self.cancel_job)
        app.router.add_get("/v1/fine-tunes/{id}/events", self.job_events)
        app.router.add_get("/v1/fine-tunes/{id}/checkpoints", self.job_checkpoints)
        endpoint_routes.register(app, self)
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.calls.append((request.method, request.path))
        return await handler(request)

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(("/v1/", "/v2/")):
            scheme, _, key = request.headers.get("Authorization", "").partition(" ")
            if scheme != "Bearer" or not key or (self.api_keys is not None and key not in self.api_keys):
                return _error(
                    401, "Invalid API key provided. Check TOGETHER_API_KEY.", kind="invalid_api_key"
                )
        return await handler(request)

    # files

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
            raise web.HTTPNotFound(
                text='{"error": {"message": "file not found", "type": "not_found"}}',
                content_type="application/json",
            )
        return f

    async def create_upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        purpose, name = str(form.get("purpose", "")), str(form.get("file_name", ""))
        file_type, checksum = str(form.get("file_type", "")), str(form.get("checksum", ""))
        if purpose not in PURPOSES:
            return _error(400, f"purpose must be one of {sorted(PURPOSES)}", param="purpose")
        if file_type not in FILE_TYPES or not name:
            return _error(
                400, "file_name and a file_type of jsonl, parquet or csv are required", param="file_type"
            )
        if not _SHA256_HEX.match(checksum):
            return _error(400, "checksum must be the file's sha256 in hex", param="checksum")
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
            return _error(400, f"file {f.id} has no content yet: PUT it to the upload URL first")
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

    # fine-tuning

    def _limits_or_error(self, model: Any) -> dict[str, Any]:
        if not isinstance(model, str) or not model:
            raise BadRequest("model is required", "model")
        if self.models is not None and model not in self.models:
            raise BadRequest(f"model {model} is not available for fine-tuning", "model")
        return model_limits(model)

    async def limits(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(self._limits_or_error(request.query.get("model_name")))
        except BadRequest as e:
            return _error(404, str(e), param=e.param)

    async def estimate_price(self, request: web.Request) -> web.Response:
        body = await request.json()
        f = self.files.get(body.get("training_file", ""))
        if f is None or f.content is None:
            return _error(400, "training_file not found", param="training_file")
        if f.status(self.clock.now(), self.file_processing_seconds) != "COMPLETED":
            return web.json_response(
                {"estimation_available": False, "unavailable_reason": "train_file_invalid"}
            )
        tokens = len(f.content) / 4 * int(body.get("n_epochs") or 1)
        return web.json_response(
            {
                "estimation_available": True,
                "allowed_to_proceed": True,
                "estimated_total_price": round(tokens / 1e6 * PRICE_PER_MILLION_TOKENS, 6),
                "estimated_train_token_count": tokens,
                "estimated_eval_token_count": 0,
                "user_limit": 100.0,
            }
        )

    def _usable_file(self, file_id: Any, param: str) -> FakeFile:
        f = self.files.get(file_id) if isinstance(file_id, str) else None
        if f is None:
            raise BadRequest(f"{param} {file_id!r} not found", param)
        status = f.status(self.clock.now(), self.file_processing_seconds)
        if f.purpose != "fine-tune" or status != "COMPLETED":
            raise BadRequest(f"{param} {f.id} is not a validated fine-tune file (status {status})", param)
        return f

    async def create_job(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.create_bodies.append(body)
        try:
            resolve_checkpoint(body, self.jobs)
            limits = self._limits_or_error(body.get("model"))
            training = self._usable_file(body.get("training_file"), "training_file")
            if body.get("validation_file"):
                self._usable_file(body["validation_file"], "validation_file")
            batch_size = check_job_body(body, limits, has_validation_file=bool(body.get("validation_file")))
        except BadRequest as e:
            return _error(400, str(e), param=e.param)
        now = self.clock.now()
        fails = (
            body["model"] in self.error_models
            or FAIL_MARKER in body["model"]
            or FAIL_MARKER in training.filename
        )
        job = FakeJob(
            id=new_job_id(),
            body={k: v for k, v in body.items() if k != "wandb_key"},
            batch_size=batch_size,
            output_name=output_model_name(body["model"], body.get("suffix")),
            created_at=now,
            line_count=(training.report or {}).get("nlines", 0),
            schedule=job_schedule(
                now,
                self.seconds_per_state,
                n_epochs=int(body.get("n_epochs", 1)),
                n_checkpoints=int(body.get("n_checkpoints", 1)),
                fails=fails,
                wandb=bool(body.get("wandb_key")),
            ),
            updated_at=now,
        )
        job.advance(now, self.clock)
        self.jobs[job.id] = job
        return web.json_response(self._job_json(job, with_events=True))

    def _job(self, request: web.Request) -> FakeJob:
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            raise web.HTTPNotFound(
                text='{"error": {"message": "fine-tune job not found", "type": "not_found"}}',
                content_type="application/json",
            )
        job.advance(self.clock.now(), self.clock)
        return job

    def _job_json(self, job: FakeJob, *, with_events: bool) -> dict[str, Any]:
        body = job.body
        method = body.get("training_method") or {"method": "sft", "train_on_inputs": "auto"}
        training = self.files.get(body["training_file"])
        tokens = int(len(training.content or b"") / 4) if training else 0
        result: dict[str, Any] = {
            "id": job.id,
            "job_id": job.id,
            "status": job.status,
            "created_at": self.clock.iso(job.created_at),
            "updated_at": self.clock.iso(job.updated_at),
            "user_id": FAKE_USER,
            "owner_address": FAKE_USER,
            "model": body["model"],
            "model_output_name": job.output_name,
            "adapter_output_name": None if _is_full(body) else f"{job.output_name}-adapter",
            "training_file": body["training_file"],
            "validation_file": body.get("validation_file", ""),
            "n_epochs": body.get("n_epochs", 1),
            "n_checkpoints": body.get("n_checkpoints", 1),
            "n_evals": body.get("n_evals", 0),
            "batch_size": job.batch_size,
            "learning_rate": body.get("learning_rate", 1e-5),
            "lr_scheduler": body.get("lr_scheduler"),
            "warmup_ratio": body.get("warmup_ratio", 0.0),
            "max_grad_norm": body.get("max_grad_norm", 1.0),
            "weight_decay": body.get("weight_decay", 0.0),
            "training_type": body.get("training_type"),
            "training_method": method,
            "train_on_inputs": method.get("train_on_inputs"),
            "suffix": body.get("suffix"),
            "token_count": tokens,
            "total_price": int(tokens * int(body.get("n_epochs", 1)) * PRICE_PER_MILLION_TOKENS * 1000),
            "param_count": 8_030_261_248,
            "trainingfile_numlines": job.line_count,
            "trainingfile_size": len(training.content or b"") if training else 0,
            "epochs_completed": body.get("n_epochs", 1) if job.status == "completed" else 0,
        }
        if any(e["type"] == "wandb_init" for e in job.events):
            result["wandb_url"] = f"https://wandb.ai/{FAKE_USER}/together/runs/{job.id}"
        if with_events:
            result["events"] = list(job.events)
        return result

    async def list_jobs(self, request: web.Request) -> web.Response:
        now = self.clock.now()
        for job in self.jobs.values():
            job.advance(now, self.clock)
        return web.json_response({"data": [self._job_json(j, with_events=False) for j in self.jobs.values()]})

    async def retrieve_job(self, request: web.Request) -> web.Response:
        return web.json_response(self._job_json(self._job(request), with_events=True))

    async def cancel_job(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job.status in TERMINAL or job.status == "cancel_requested":
            return _error(400, f"job {job.id} is {job.status} and cannot be cancelled")
        job.schedule = cancel_schedule(self.clock.now(), self.seconds_per_state)
        job.advance(self.clock.now(), self.clock)
        return web.json_response(self._job_json(job, with_events=False))

    async def job_events(self, request: web.Request) -> web.Response:
        return web.json_response({"data": list(self._job(request).events)})

    async def job_checkpoints(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job.status != "completed":
            return web.json_response({"data": []})
        created = self.clock.iso(job.updated_at)
        kinds = ["model"] if _is_full(job.body) else ["model", "adapter"]
        return web.json_response(
            {
                "data": [
                    {
                        "checkpoint_type": f"Final {kind}",
                        "checkpoint": kind,
                        "created_at": created,
                        "path": f"fake://{job.id}/{kind}",
                        "step": 0,
                    }
                    for kind in kinds
                ]
            }
        )
