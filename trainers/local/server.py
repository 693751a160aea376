"""``distill serve``: a local model (and its LoRA adapter) behind the OpenAI-compatible API the engine speaks.

Routes on 127.0.0.1: ``POST /v1/chat/completions``, ``POST /v1/completions`` and ``GET /v1/models``. Answers
carry ``usage`` (prompt, completion and total tokens) and ``finish_reason``; errors are OpenAI's shape
(``{"error": {"message", "type", "param", "code"}}``): 400 for a malformed request, 404 for a model this
server does not serve. Generation runs on one worker thread, one request at a time, so the event loop keeps
accepting while the model works. :class:`LocalModelServer` runs in a background thread (for the pipeline and
tests) or until a signal (:func:`serve_forever`).
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import orjson
from aiohttp import web

from distill.errors import UsageError
from distill.servers import loopback
from distill.servers.loopback import HOST, listen
from distill.servers.openai_body import completion_body

from .generation import DEFAULT_MAX_TOKENS, Generation, GenerationRequest, LocalModels


class BadRequest(Exception):
    """A request the API refuses with 400, naming the parameter."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class LocalModelServer:
    """Serve ``models`` on ``127.0.0.1:port`` (0: a free port); ``base_url`` ends in ``/v1``."""

    def __init__(self, models: LocalModels, *, port: int = 0) -> None:
        self.models = models
        self.port = port
        self._runner: web.AppRunner | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="distill-serve")

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    async def start(self) -> LocalModelServer:
        try:
            self._runner, self.port = await listen(
                self.app(), self.port, access_log=None, shutdown_timeout=0.25
            )
        except OSError as e:
            raise UsageError(
                f"cannot listen on {HOST}:{self.port}: {e.strerror}; pick another --port (0 picks a free one)"
            ) from None
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        self._worker.shutdown(wait=False, cancel_futures=True)

    @contextmanager
    def in_thread(self) -> Iterator[LocalModelServer]:
        """Serve from a background thread's event loop while the ``with`` block runs."""
        with loopback.in_thread(self.start, self.stop):
            yield self

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/v1/models", self.list_models)
        return app

    async def list_models(self, request: web.Request) -> web.Response:
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "distill"} for n in self.models.names]
        return _json(200, {"object": "list", "data": data})

    async def chat(self, request: web.Request) -> web.Response:
        return await self._answer(request, "chat")

    async def completions(self, request: web.Request) -> web.Response:
        return await self._answer(request, "completions")

    async def _answer(self, request: web.Request, kind: str) -> web.Response:
        try:
            parsed = parse_request(await request.read(), kind)
        except BadRequest as e:
            return _error(400, str(e), "invalid_request_error", param=e.param)
        if not self.models.knows(parsed.model):
            served = ", ".join(self.models.names)
            message = f"The model `{parsed.model}` does not exist here; this server serves: {served}"
            return _error(404, message, "invalid_request_error", param="model", code="model_not_found")
        loop = asyncio.get_running_loop()
        try:
            generation = await loop.run_in_executor(self._worker, self.models.generate, parsed)
        except UsageError as e:
            return _error(400, str(e), "invalid_request_error")
        return _json(200, answer_json(kind, parsed.model, generation))


def parse_request(raw: bytes, kind: str) -> GenerationRequest:
    """The body of a chat or completions request; :class:`BadRequest` for anything the API would refuse."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    if body.get("stream"):
        raise BadRequest("stream is not supported by distill serve", "stream")
    if body.get("n", 1) != 1:
        raise BadRequest("only n = 1 is supported", "n")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model is required", "model")
    fields: dict[str, Any] = {"model": model, **_sampling(body)}
    if kind == "chat":
        fields["messages"] = _messages(body.get("messages"))
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise BadRequest("prompt must be a string", "prompt")
        fields["prompt"] = prompt
    return GenerationRequest(**fields)


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise BadRequest("messages must be a non-empty list", "messages")
    messages = []
    for m in value:
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise BadRequest("each message needs a string role and string content", "messages")
        messages.append({"role": m["role"], "content": m["content"]})
    return messages


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens", DEFAULT_MAX_TOKENS))
    if type(max_tokens) is not int or max_tokens < 1:
        raise BadRequest("max_tokens must be a positive integer", "max_tokens")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise BadRequest("stop must be a string or a list of strings", "stop")
    fields: dict[str, Any] = {"max_tokens": max_tokens, "stop": stop}
    for name in ("temperature", "top_p", "repetition_penalty"):
        value = body.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise BadRequest(f"{name} must be a number of at least 0", name)
            fields[name] = float(value)
    for name in ("top_k", "seed"):
        value = body.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int):
                raise BadRequest(f"{name} must be an integer", name)
            fields[name] = value
    if fields.get("top_k", 1) < 1:
        fields["top_k"] = None  # vLLM and Together take top_k 0 or -1 as "no top-k"
    return fields


def answer_json(kind: str, model: str, generation: Generation) -> dict[str, Any]:
    """The OpenAI response object for ``generation``."""
    return completion_body(
        kind,
        answer_id=uuid.uuid4().hex,
        model=model,
        text=generation.text,
        finish_reason=generation.finish_reason,
        prompt_tokens=generation.prompt_tokens,
        completion_tokens=generation.completion_tokens,
    )


async def serve_forever(models: LocalModels, port: int, announce) -> None:
    """Serve until SIGTERM or SIGINT; ``announce(base_url)`` once listening."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await LocalModelServer(models, port=port).start()
    try:
        announce(server.base_url)
        await stop.wait()
    finally:
        await server.stop()


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _error(
    status: int, message: str, kind: str, *, param: str | None = None, code: str | None = None
) -> web.Response:
    return _json(status, {"error": {"message": message, "type": kind, "param": param, "code": code}})


@contextmanager
def serving(model: str, adapter: str | None = None) -> Iterator[str]:
    """Serve ``model`` (and ``adapter``) on a free port while the block runs; yield the ``/v1`` URL."""
    with LocalModelServer(LocalModels(model, adapter)).in_thread() as server:
        yield server.base_url
