"""The teacher client: keep-alive HTTP connections speaking the OpenAI-compatible chat and completions APIs.

``TeacherClient.send(request)`` makes exactly one HTTP call and either returns a
:class:`~distill.requests.TeacherResponse` or raises a :class:`~distill.errors.TeacherError` subclass that says
whether retrying can help. It never retries itself (the engine's retry policy does) and never puts the API key
in an error message.

aiohttp carries every call; ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` are honoured (looked up once per client).
"""

from __future__ import annotations

import asyncio
import urllib.request
from urllib.parse import urlsplit

import aiohttp
import orjson

from .deadlines import Deadlines
from .errors import (
    AuthenticationError,
    ConnectionFailed,
    MalformedResponse,
    PermanentError,
    RateLimited,
    RequestTimeout,
    ServerError,
    TeacherError,
    UsageError,
)
from .ratelimit_headers import RateSignals, parse_rate_headers
from .requests import TeacherRequest, TeacherResponse
from .settings import RunSettings

ENDPOINTS = {"chat": "/chat/completions", "completions": "/completions"}


class TeacherClient:
    """Use as ``async with TeacherClient(base_url, api_key) as client``."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 600.0,
        max_connections: int = 64,
    ) -> None:
        self.base_url = checked_base_url(base_url)
        self.timeout = timeout
        # looked up once: aiohttp's trust_env looks the variables up on every request (measured: a third of the speed)
        self._proxy = proxy_for(self.base_url)
        self._headers = {"Content-Type": "application/json"}
        self._api_key = api_key
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        check_header_values(self._headers)
        self._max_connections = max_connections
        self._urls = {api: self.base_url + path for api, path in ENDPOINTS.items()}
        self._session: aiohttp.ClientSession | None = None
        self._deadlines: Deadlines | None = None

    @classmethod
    def for_settings(cls, settings: RunSettings, api_key: str | None) -> TeacherClient:
        """The client a run with ``settings`` sends through: its URL, timeout and concurrency."""
        return cls(
            settings.base_url,
            api_key,
            timeout=settings.request_timeout,
            max_connections=settings.concurrency,
        )

    async def __aenter__(self) -> TeacherClient:
        connector = aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            json_serialize=None,
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=None),  # --request-timeout is kept by self._deadlines
            cookie_jar=aiohttp.DummyCookieJar(),  # an API sets no cookie worth keeping; the jar costs per call
        )
        self._deadlines = Deadlines(self.timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._deadlines is not None:
            self._deadlines.close()
            self._deadlines = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, request: TeacherRequest) -> tuple[TeacherResponse, RateSignals]:
        """One HTTP call for ``request``: the answer and the server's rate signals (an error carries them too)."""
        assert self._session is not None and self._deadlines is not None, (
            "use 'async with TeacherClient(...)'"
        )
        url = self._urls[request.api]
        task = self._deadlines.start()
        try:
            # a payload made here: from plain bytes aiohttp would look the type up in its payload registry
            body = aiohttp.BytesPayload(orjson.dumps(request.body()), content_type="application/json")
            async with self._session.post(url, data=body, proxy=self._proxy) as resp:
                status, headers, body = resp.status, resp.headers, await resp.read()
        except asyncio.CancelledError:
            if not self._deadlines.expired(task):
                raise
            raise RequestTimeout(
                f"no answer from {url} within {self.timeout:g} s (--request-timeout)"
            ) from None
        except TimeoutError:  # not aiohttp's (it has no timeout of its own here): the loop's or the OS's
            raise RequestTimeout(f"no answer from {url}: {self.timeout:g} s (--request-timeout)") from None
        except aiohttp.ClientError as e:  # refused, reset, a broken TLS or HTTP exchange
            raise ConnectionFailed(f"connection to {url} failed: {type(e).__name__}") from None
        finally:
            self._deadlines.finish(task)
        rate = parse_rate_headers(headers)
        if status != 200:
            error = self._redacted(error_for_status(status, body, rate))
            error.signals = rate
            raise error
        return cut_at_stop(parse_answer(request.api, body), request), rate

    def _redacted(self, error: TeacherError) -> TeacherError:
        """``error`` with the API key cut out: some providers quote the key they refused in their message."""
        if self._api_key and self._api_key in str(error):
            error.args = (str(error).replace(self._api_key, "[the API key]"),)
        return error


def check_header_values(fields: dict[str, str]) -> None:
    """A UsageError (never showing the value) for a header value that would break the request."""
    for name, value in fields.items():
        text = f"{name}: {value}"
        if "\r" in text or "\n" in text or "\0" in text or max(map(ord, text)) > 0xFF:
            raise UsageError(
                f"the {name} header has a line break or a character outside Latin-1 in its value; if it is "
                "Authorization, check the API key in TOGETHER_API_KEY (or the variable --api-key-env names)"
            )


def proxy_for(base_url: str) -> str | None:
    """The proxy that ``HTTPS_PROXY``/``HTTP_PROXY`` name for ``base_url``, unless ``NO_PROXY`` exempts its host."""
    url = urlsplit(base_url)
    proxy = urllib.request.getproxies().get(url.scheme)
    if not proxy or urllib.request.proxy_bypass(url.hostname or ""):
        return None
    return proxy


def checked_base_url(base_url: str) -> str:
    """``base_url`` without its trailing slash; a UsageError unless it is an http(s) URL with a host."""
    try:
        url = urlsplit(base_url)
        valid = url.scheme in ("http", "https") and bool(url.hostname) and (url.port or 0) >= 0
    except ValueError:  # an unclosed IPv6 bracket, a port that is not a number
        valid = False
    if not valid:
        raise UsageError(
            f"--base-url {base_url!r} is not an http(s) URL; pass one like https://api.together.xyz/v1 "
            "or http://127.0.0.1:8000/v1"
        )
    return base_url.rstrip("/")


def parse_answer(api: str, body: bytes) -> TeacherResponse:
    """The answer in a 200 body, or MalformedResponse when the body is not what the API promises."""
    try:
        data = orjson.loads(body)
        choice = data["choices"][0]
        text = choice["message"]["content"] if api == "chat" else choice["text"]
        usage = data.get("usage") or {}
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        raise MalformedResponse(f"malformed response body ({len(body)} bytes): {body[:80]!r}") from None
    if not isinstance(text, str):
        raise MalformedResponse("response has no text in choices[0]")
    if not isinstance(usage, dict):
        usage = {}  # a server that reports usage in another shape reported none we can read
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return TeacherResponse(
        text,
        choice.get("finish_reason"),
        prompt if isinstance(prompt, int) else None,
        completion if isinstance(completion, int) else None,
    )


def cut_at_stop(response: TeacherResponse, request: TeacherRequest) -> TeacherResponse:
    """``response`` without its first stop sequence and what follows, as the OpenAI API defines ``stop``.

    A server that stops on a token containing the sequence may return it (``transformers serve`` does, with the
    rest of that token); the answer stored and written is the text before it, as from any other server.
    """
    stops = None
    for name, value in request.params:  # a loop: no generator made for every answer
        if name == "stop":
            stops = value
            break
    if not stops:
        return response
    found = [i for i in (response.text.find(s) for s in stops if s) if i >= 0]
    if not found:
        return response
    return response._replace(text=response.text[: min(found)])


def error_for_status(status: int, body: bytes, signals: RateSignals) -> TeacherError:
    reason = _error_message(body)
    if status == 429:
        return RateLimited(f"429 rate limited: {reason}", retry_after=signals.retry_after)
    if status in (401, 403):
        return AuthenticationError(
            f"{status} from the teacher: {reason}. Check the API key (TOGETHER_API_KEY, or the variable named by "
            "--api-key-env) and that it may use this model",
            status=status,
        )
    if status >= 500 or status == 408:
        return ServerError(f"{status} from the teacher: {reason}", status=status)
    return PermanentError(f"{status} from the teacher: {reason}", status=status)


def _error_message(body: bytes) -> str:
    """The server's reason: OpenAI's ``{"error": {"message"}}``, or FastAPI's ``{"detail": str | [{"msg"}]}``
    (``transformers serve``), else the body's start."""
    try:
        data = orjson.loads(body)
        message = data["error"]["message"] if isinstance(data.get("error"), dict) else data.get("error")
        detail = data.get("detail")
        if not message and isinstance(detail, list):
            message = "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
        elif not message:
            message = detail
        if message:
            return str(message)[:300]
    except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError):
        pass
    return body[:200].decode("utf-8", "replace") or "(empty body)"
