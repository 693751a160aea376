"""What distill needs of a provider's Batch API, and the translation of SDK errors into distill's.

A provider uploads a batch input file, creates a batch over it, reports the batch's state, finds a batch by its
input file (to re-attach after an interruption that came between creating a batch and recording it) and
downloads files. :mod:`.together_api` and :mod:`.openai_api` implement it through the official SDKs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from distill.errors import (
    AuthenticationError,
    ConnectionFailed,
    PermanentError,
    RateLimited,
    RequestTimeout,
    ServerError,
)
from distill.requests import ApiKind, TeacherRequest

ENDPOINTS: dict[str, str] = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
TERMINAL = frozenset(("completed", "failed", "expired", "cancelled"))


@dataclass(frozen=True, slots=True)
class BatchState:
    """A batch as the provider reports it, in lower-case OpenAI terms (Together's upper-case ones lowered)."""

    id: str
    status: str
    progress: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    message: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


class Provider(Protocol):
    """A Batch API. ``max_requests``/``max_bytes`` are the provider's limits on one input file."""

    name: str
    max_requests: int
    max_bytes: int

    def line(self, request: TeacherRequest) -> dict[str, Any]:
        """The input-file line of ``request`` (``custom_id`` is the request's cache key)."""
        ...

    async def upload(self, path: Path) -> str:
        """Upload a batch input file; its file id."""
        ...

    async def create(self, input_file_id: str, endpoint: str) -> str:
        """Create a batch over an uploaded file; its batch id."""
        ...

    async def find(self, input_file_id: str) -> str | None:
        """The id of a batch created over ``input_file_id``, if there is one."""
        ...

    async def retrieve(self, batch_id: str) -> BatchState: ...

    async def download(self, file_id: str, destination: Path) -> None: ...

    async def close(self) -> None: ...


def endpoint_for(api: ApiKind) -> str:
    return ENDPOINTS[api]


@contextmanager
def sdk_errors(sdk: ModuleType, provider: str, action: str, base_url: str) -> Iterator[None]:
    """Turn an SDK exception raised while doing ``action`` into the distill error that says what to do."""
    try:
        yield
    except (sdk.AuthenticationError, sdk.PermissionDeniedError) as e:
        raise AuthenticationError(
            f"{provider} refused the API key while trying to {action} (HTTP {e.status_code}); check the key "
            "(TOGETHER_API_KEY, or the variable named by --api-key-env)",
            status=e.status_code,
        ) from None
    except sdk.RateLimitError as e:
        raise RateLimited(f"{provider} rate-limited the request to {action}: {_message(e)}") from None
    except sdk.InternalServerError as e:
        raise ServerError(
            f"{provider} failed to {action} (HTTP {e.status_code}): {_message(e)}", status=e.status_code
        ) from None
    except sdk.APITimeoutError:
        raise RequestTimeout(f"{provider} did not answer in time while trying to {action}") from None
    except sdk.APIConnectionError:
        raise ConnectionFailed(
            f"cannot reach the {provider} API at {base_url} to {action}; check --base-url and the network, then "
            "run the same command again"
        ) from None
    except sdk.APIStatusError as e:
        raise PermanentError(
            f"{provider} refused to {action} (HTTP {e.status_code}): {_message(e)}", status=e.status_code
        ) from None


def _message(error: Any) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"][:300]
    return str(getattr(error, "message", error))[:300]
