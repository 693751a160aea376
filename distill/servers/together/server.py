"""A local fake of the Together files and fine-tuning API (aiohttp), faithful to what the ``together`` SDK sends.

Run it in-process (``async with FakeTogether() as fake``), in a background thread for synchronous callers
(``with FakeTogether().in_thread() as fake``), or as a process: ``python -m distill.servers.together --port 0
--port-file F``. Point the SDK at ``fake.url`` (``TOGETHER_BASE_URL`` or ``Together(base_url=...)``).

It checks the bearer key (any non-empty key unless ``api_keys`` is given) and never logs or returns it; the W&B
key of a job body is kept in memory only (``create_bodies``, for tests) and never echoed. ``calls`` lists every
(method, path) it served, so a test can count uploads and job creations.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from distill.servers import loopback
from distill.servers.loopback import listen

from . import endpoint_routes
from .clock import Clock
from .endpoints import EndpointState
from .file_routes import FileRoutes, api_error
from .job_routes import FineTuneRoutes
from .store import FakeFile, FakeJob

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeTogether(FileRoutes, FineTuneRoutes):
    """The fake service. Knobs: ``seconds_per_state`` (how long a job stays pending, queued and running),
    ``clock`` (a :class:`~distill.servers.together.clock.ManualClock` lets a test move time), ``api_keys`` (keys
    accepted; None accepts any), ``models`` (base models offered; None offers any), ``error_models`` (base
    models whose jobs end in ``error``, as does any model or training file named with ``fake-error``) and
    ``file_processing_seconds`` (how long an upload's server-side check takes). An upload whose file name
    contains ``fake-invalid`` fails the server-side check whatever it holds.

    Its routes are :class:`~.file_routes.FileRoutes` and :class:`~.job_routes.FineTuneRoutes` (the handlers of
    the files and fine-tuning APIs, over this object's state) and :mod:`.endpoint_routes`.
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
        self._runner, self.port = await listen(self.app(), self.port, host=self.host, access_log=None)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @contextmanager
    def in_thread(self) -> Iterator[FakeTogether]:
        """Serve from a background thread's event loop, for synchronous callers such as the SDK's client."""
        with loopback.in_thread(self.start, self.stop):
            yield self

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
                return api_error(
                    401, "Invalid API key provided. Check TOGETHER_API_KEY.", kind="invalid_api_key"
                )
        return await handler(request)
