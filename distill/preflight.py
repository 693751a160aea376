"""Checks before the first paid request: the key, the server, the URL and the model.

:func:`check_key` runs at once, with no network: a provider known to need a key (Together, OpenAI, ...) with
the key's variable unset stops the run before anything is read. A local server (or any other) may need no key;
it says so itself with a 401 to the pre-flight request.

:func:`preflight` asks ``GET BASE/models`` once, before the first request of the run goes out (a rerun that
finds every answer in the cache sends nothing, so it needs no server): an unreachable URL (DNS, connection
refused) or a 401/403 ends the run in seconds naming the URL; a 404 on a URL without ``/v1`` that answers with
``/v1`` ends it with "did you mean"; a model the server does not list is a warning.

:class:`CheckedClient` wraps the teacher client: it runs the pre-flight before its first request, and treats a
404/405 met before any request succeeded as a configuration error (the endpoint itself is missing: a wrong
``--base-url`` or ``--model``) rather than as that conversation's failure, so nothing is recorded in the cache and
the same command works once the URL is fixed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson

from .errors import AuthenticationError, PermanentError, UsageError

PREFLIGHT_TIMEOUT = 15.0
# Hosts of providers that refuse every request without a key: an unset key is said before anything is sent.
KEYED_HOSTS = (
    "api.together.xyz",
    "api.together.ai",
    "api.openai.com",
    "api.fireworks.ai",
    "api.groq.com",
    "api.deepinfra.com",
    "api.mistral.ai",
    "openrouter.ai",
)
NOT_FOUND = (404, 405)
Warn = Callable[[str], None]


class TeacherUnreachable(UsageError):
    """The teacher's URL does not answer at all (DNS, connection refused, no answer in time)."""


class EndpointNotFound(UsageError):
    """The teacher's URL answers, but not the API: a wrong ``--base-url`` (or ``--model``)."""


def needs_key(base_url: str) -> bool:
    host = (urlsplit(base_url).hostname or "").lower()
    return any(host == known or host.endswith("." + known) for known in KEYED_HOSTS)


def check_key(base_url: str, api_key: str | None, key_env: str) -> None:
    """A UsageError now when ``base_url`` is a provider that needs a key and ``key_env`` is not set."""
    if not api_key and needs_key(base_url):
        host = urlsplit(base_url).hostname
        raise UsageError(
            f"{key_env} is not set and {host} needs an API key: export {key_env}=... (or name another variable "
            "with --api-key-env)"
        )


def with_v1(base_url: str) -> list[str]:
    """URLs the user may have meant when ``base_url`` lacks ``/v1``: the URL plus ``/v1``, and the host's ``/v1``."""
    url = urlsplit(base_url.rstrip("/"))
    if url.path.rstrip("/").endswith("/v1"):
        return []
    candidates = [base_url.rstrip("/") + "/v1", urlunsplit((url.scheme, url.netloc, "/v1", "", ""))]
    return list(dict.fromkeys(candidates))


async def preflight(
    base_url: str,
    model: str,
    api_key: str | None,
    key_env: str,
    warn: Warn,
    timeout: float = PREFLIGHT_TIMEOUT,
) -> None:
    """Ask ``GET BASE/models`` and raise on what makes every request fail; ``warn`` hears the doubts."""
    base_url = base_url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with aiohttp.ClientSession(
        headers=headers, timeout=aiohttp.ClientTimeout(total=timeout), trust_env=True
    ) as session:
        status, body = await _get(session, f"{base_url}/models", base_url, timeout)
        if status in (401, 403):
            missing = f"{key_env} is not set, and " if not api_key else ""
            raise AuthenticationError(
                f"{missing}{base_url} refused the key ({status} to GET /models): set {key_env} (or "
                "--api-key-env) to a key that may use this server",
                status=status,
            )
        if status in NOT_FOUND:
            for candidate in with_v1(base_url):
                found, _ = await _get(session, f"{candidate}/models", base_url, timeout, quiet=True)
                if found == 200:
                    raise EndpointNotFound(
                        f"{base_url} has no OpenAI-compatible API ({status} to GET /models) but {candidate} has: "
                        f"did you mean --base-url {candidate}?"
                    )
            warn(f"{base_url}/models answered {status}: the model list cannot be checked")
            return
        if status != 200:
            warn(f"{base_url}/models answered {status}: the model list cannot be checked")
            return
    models = listed_models(body)
    if models is not None and model not in models:
        shown = ", ".join(sorted(models)[:5]) + (", ..." if len(models) > 5 else "")
        warn(
            f"model {model!r} is not among the {len(models)} models {base_url} lists ({shown}); check --model "
            "if the requests fail"
        )


async def _get(
    session: aiohttp.ClientSession, url: str, base_url: str, timeout: float, quiet: bool = False
) -> tuple[int | None, bytes]:
    try:
        async with session.get(url) as response:
            return response.status, await response.read()
    except TimeoutError:
        if quiet:
            return None, b""
        raise TeacherUnreachable(
            f"the teacher at {base_url} did not answer GET /models within {timeout:g} s; check --base-url and "
            "that the server is up"
        ) from None
    except aiohttp.ClientError as e:
        if quiet:
            return None, b""
        raise TeacherUnreachable(
            f"cannot reach the teacher at {base_url} ({_reason(e)}); check --base-url and that the server is up"
        ) from None


def _reason(error: aiohttp.ClientError) -> str:
    cause = getattr(error, "os_error", None) or error.__cause__ or error
    return str(cause) or type(error).__name__


def listed_models(body: bytes) -> set[str] | None:
    """The model ids of an OpenAI-style model list (``{"data": [{"id": ...}]}`` or a bare list), else None."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    items = data.get("data") if isinstance(data, dict) else data
    if not isinstance(items, list):
        return None
    return {str(item["id"]) for item in items if isinstance(item, dict) and "id" in item}


class CheckedClient:
    """A teacher client that runs ``check`` before its first request and stops on a missing endpoint.

    ``send`` has the wrapped client's signature; everything else is the wrapped client's.
    """

    def __init__(self, client, check: Callable[[], Awaitable[None]] | None = None) -> None:
        self._client = client
        self._check = check
        self._checked: asyncio.Future[None] | None = None
        self._answered = False

    def __getattr__(self, name: str):
        return getattr(self._client, name)

    async def send(self, request):
        if self._check is not None:
            if self._checked is None:
                self._checked = asyncio.ensure_future(self._check())
            await asyncio.shield(self._checked)
        try:
            result = await self._client.send(request)
        except PermanentError as e:
            if e.status in NOT_FOUND and not self._answered:
                raise self._not_found(request, e) from None
            raise
        if not self._answered:
            self._answered = True
            # Checked and answered: nothing is left to watch, so later requests go straight to the client
            # (a wrapper coroutine and a shielded future per request cost microseconds at thousands a second).
            self.send = self._client.send
        return result

    def _not_found(self, request, error: PermanentError) -> EndpointNotFound:
        from .client import ENDPOINTS

        base_url = self._client.base_url
        guess = with_v1(base_url)
        hint = f"; did you mean --base-url {guess[0]}?" if guess else " (check --base-url and --model)"
        return EndpointNotFound(
            f"POST {base_url}{ENDPOINTS[request.api]} failed before any request succeeded ({error}): the URL or "
            f"the model is wrong, so the run stopped and recorded nothing against the conversations{hint}"
        )
