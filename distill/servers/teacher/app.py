"""The local teacher: an OpenAI-compatible aiohttp server with deterministic answers, limits and faults.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``, ``GET /stats``
(``?hashes=0`` leaves out the per-request tables), ``POST /stats/reset``, ``GET /knobs`` and ``POST /knobs``
(a JSON object of knobs to change). Use :class:`TeacherServer` in-process or
:func:`~distill.servers.teacher.process.start_teacher_process` for a server in its own process.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import orjson
from aiohttp import web

from distill import tokens
from distill.errors import UsageError
from distill.servers.loopback import HOST, listen

from . import answers, batch_routes, faults
from .knobs import TeacherKnobs
from .ratelimit import WindowLimiter
from .stats import TeacherStats

_PARSERS = {"chat": answers.parse_chat, "completions": answers.parse_completion}


class TeacherState:
    """Everything a running teacher knows: its knobs, limiter and counters."""

    def __init__(self, knobs: TeacherKnobs) -> None:
        self.stats = TeacherStats(knobs.track_hashes)
        self.set_knobs(knobs)

    def set_knobs(self, knobs: TeacherKnobs) -> None:
        """Switch to ``knobs``; the rate-limit windows restart when the limits change."""
        old = getattr(self, "knobs", None)
        self.knobs = knobs
        self.faulty = faults.has_faults(knobs)
        self.stats.track_hashes = knobs.track_hashes
        if old is None or _limits(old) != _limits(knobs):
            limited = knobs.rpm is not None or knobs.tpm is not None
            self.limiter = (
                WindowLimiter(
                    knobs.rpm,
                    knobs.tpm,
                    window_s=knobs.window,
                    dialect=knobs.rate_headers,
                    rpm_after=knobs.rpm_after,
                    change_after=knobs.rpm_change_after,
                )
                if limited
                else None
            )

    async def handle(self, request: web.Request, kind: str) -> web.StreamResponse:
        stats = self.stats
        stats.requests += 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            return await self._answer(request, kind)
        finally:
            stats.in_flight -= 1

    async def _answer(self, request: web.Request, kind: str) -> web.StreamResponse:
        knobs, stats = self.knobs, self.stats
        if knobs.api_key is not None and request.headers.get("Authorization") != f"Bearer {knobs.api_key}":
            stats.unauthorized += 1
            return _error(401, "invalid or missing API key", {}, code="invalid_api_key")
        try:
            body = answers.load_body(await request.read())
            parsed = _PARSERS[kind](body, knobs.token_counter)
        except answers.InvalidRequest as e:
            stats.bad_requests += 1
            return _error(400, str(e), {}, param=e.param)
        request_hash = answers.request_hash(body)
        completion = answers.complete(parsed, knobs.answer_words, knobs.token_counter)
        headers = {"x-teacher-request-hash": request_hash}
        refusal = self._admit(parsed, completion, headers)
        if refusal is not None:
            return refusal
        attempt = stats.receive(request_hash)
        if knobs.permanent_marker is not None and knobs.permanent_marker in parsed.last_user:
            stats.faults["permanent"] += 1
            message = f"the request contains the marker {knobs.permanent_marker!r} and is refused for good"
            return _error(knobs.permanent_status, message, headers)
        delay = knobs.latency + (faults.jitter(knobs, request_hash, attempt) if knobs.latency_jitter else 0.0)
        if delay > 0:
            await asyncio.sleep(delay)
        answer = answers.answer_json(parsed, completion, request_hash)
        fault = faults.pick_fault(knobs, request_hash, attempt) if self.faulty else None
        if fault is not None:
            stats.faults[fault] += 1
            return await faults.deliver(fault, knobs, request, answer, request_hash, attempt, headers)
        stats.answer(request_hash, parsed.prompt_tokens, completion.completion_tokens)
        return faults.json_response(200, orjson.dumps(answer), headers)

    def _admit(
        self, parsed: answers.TeacherRequest, completion: answers.Completion, headers: dict[str, str]
    ) -> web.Response | None:
        """Charge the rate limit and add its headers; the 429 to send when the window is full, else ``None``."""
        if self.limiter is None:
            return None
        knobs = self.knobs
        answer_cost = (
            completion.completion_tokens if knobs.tpm_charge == "usage" else (parsed.max_tokens or 0)
        )
        admission = self.limiter.acquire(parsed.prompt_tokens + answer_cost)
        headers.update(admission.headers)
        if admission.admitted:
            return None
        self.stats.rate_limited += 1
        if knobs.retry_after:
            headers["retry-after-ms"] = str(max(1, round(admission.reset_s * 1000)))
            headers["Retry-After"] = str(max(1, math.ceil(admission.reset_s)))
        if knobs.limit_status == 503:
            body = faults.error_body("the model is overloaded, try again later", "server_error")
            return faults.json_response(503, body, headers)
        limited_by = admission.limited_by or "requests"
        message = f"You have been rate limited: the {limited_by} per minute limit is enforced per {knobs.window:g} s window"
        kind = "dynamic_request_limited" if limited_by == "requests" else "dynamic_token_limited"
        return faults.json_response(429, faults.error_body(message, kind), headers)


def _limits(knobs: TeacherKnobs) -> tuple:
    """The knobs that shape the rate limiter: when they change, its windows restart."""
    return (knobs.rpm, knobs.tpm, knobs.window, knobs.rate_headers, knobs.rpm_after, knobs.rpm_change_after)


def _error(status: int, message: str, headers: dict[str, str], **fields: str | None) -> web.Response:
    return faults.json_response(
        status, faults.error_body(message, "invalid_request_error", **fields), headers
    )


def build_app(state: TeacherState) -> web.Application:
    """The aiohttp application serving ``state``."""

    async def chat(request: web.Request) -> web.StreamResponse:
        return await state.handle(request, "chat")

    async def completions(request: web.Request) -> web.StreamResponse:
        return await state.handle(request, "completions")

    async def models(request: web.Request) -> web.Response:
        key = state.knobs.api_key
        if key is not None and request.headers.get("Authorization") != f"Bearer {key}":
            return _error(401, "invalid or missing API key", {}, code="invalid_api_key")
        model = {"id": state.knobs.model, "object": "model", "created": 0, "owned_by": "distill"}
        return web.json_response({"object": "list", "data": [model]}, dumps=_dumps)

    async def get_stats(request: web.Request) -> web.Response:
        with_hashes = request.query.get("hashes", "1") not in ("0", "false", "no")
        return web.json_response(state.stats.to_dict(with_hashes), dumps=_dumps)

    async def reset_stats(request: web.Request) -> web.Response:
        state.stats.reset()
        return web.json_response({"reset": True}, dumps=_dumps)

    async def get_knobs(request: web.Request) -> web.Response:
        return web.json_response(state.knobs.to_dict(), dumps=_dumps)

    async def post_knobs(request: web.Request) -> web.Response:
        try:
            changes = orjson.loads(await request.read())
            if not isinstance(changes, dict):
                raise UsageError("POST /knobs takes a JSON object of knob names")
            state.set_knobs(state.knobs.replace(**changes))
        except (orjson.JSONDecodeError, UsageError) as e:
            return faults.json_response(400, faults.error_body(str(e), "invalid_request_error"), {})
        return web.json_response(state.knobs.to_dict(), dumps=_dumps)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/stats", get_stats)
    app.router.add_post("/stats/reset", reset_stats)
    app.router.add_get("/knobs", get_knobs)
    app.router.add_post("/knobs", post_knobs)
    batch_routes.add_routes(app, state)
    return app


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


class LoopbackAddress:
    """The URLs of a teacher listening on ``HOST`` at ``self.port`` (in this process or another)."""

    port: int

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL, ending in ``/v1``."""
        return f"http://{HOST}:{self.port}/v1"

    @property
    def root_url(self) -> str:
        """The URL without ``/v1`` (what the ``together`` 3.x SDK takes as ``base_url``)."""
        return f"http://{HOST}:{self.port}"


class TeacherServer(LoopbackAddress):
    """The local teacher running in this event loop, on ``127.0.0.1`` and a free port (or ``port``).

    ``async with TeacherServer(TeacherKnobs(rpm=600)) as server:`` then point a client at ``server.base_url``
    (``http://127.0.0.1:PORT/v1``); ``server.stats`` holds the live counters, ``server.set_knobs(...)`` changes
    the knobs between requests.
    """

    def __init__(self, knobs: TeacherKnobs | None = None, *, port: int = 0) -> None:
        self.state = TeacherState(knobs or TeacherKnobs())
        self._port = port
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def stats(self) -> TeacherStats:
        return self.state.stats

    @property
    def knobs(self) -> TeacherKnobs:
        return self.state.knobs

    def set_knobs(self, knobs: TeacherKnobs | None = None, **changes: Any) -> TeacherKnobs:
        """Replace the knobs, or change some of them by name; return the knobs now in force."""
        self.state.set_knobs((knobs or self.state.knobs).replace(**changes))
        return self.state.knobs

    async def start(self) -> TeacherServer:
        """Bind and start serving; ``port`` holds the port afterwards."""
        if self.state.knobs.token_counter == "tiktoken":
            tokens.encoding()  # load the BPE now, not during the first request
        self._runner, self.port = await listen(
            build_app(self.state),
            self._port,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=0.25,
        )
        return self

    async def stop(self) -> None:
        """Stop serving; requests still hanging are cancelled."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> TeacherServer:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
