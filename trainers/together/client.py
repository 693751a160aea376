"""The ``together`` SDK client, and the translation of its errors into distill's, with a fix for each.

The API base is whatever the caller passes (``--base-url``) or, when that is None, what the SDK itself reads:
``TOGETHER_BASE_URL``, else its default. The key comes from ``TOGETHER_API_KEY`` unless given; it never appears
in a message.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import together
from together import Together

from distill.errors import AuthenticationError, CheckError, TrainerError

API_KEY_ENV = "TOGETHER_API_KEY"
BASE_URL_ENV = "TOGETHER_BASE_URL"


class NotOnService(TrainerError):
    """The service does not know the file or job id asked for (HTTP 404)."""


def make_client(base_url: str | None = None, api_key: str | None = None, *, max_retries: int = 2) -> Together:
    """A synchronous SDK client; a missing key is an :class:`AuthenticationError` that says what to set."""
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    if not key:
        raise AuthenticationError(
            f"no Together API key: set {API_KEY_ENV} (create one at https://api.together.ai/settings/api-keys)"
        )
    return Together(api_key=key, base_url=base_url, max_retries=max_retries)


def server_message(error: together.APIStatusError) -> str:
    """The human part of an error answer: ``error.message`` of the JSON body when there is one."""
    body: Any = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
        if isinstance(body.get("message"), str):
            return body["message"]
    if isinstance(body, str) and body.strip():
        return body.strip()
    return error.message


@contextmanager
def sdk_errors(action: str, base_url: str) -> Iterator[None]:
    """Turn the SDK's exceptions raised while doing ``action`` into distill errors with a fix-it hint."""
    try:
        yield
    except (together.AuthenticationError, together.PermissionDeniedError) as e:
        raise AuthenticationError(
            f"Together refused the API key while trying to {action} (HTTP {e.status_code}): {server_message(e)}; "
            f"check {API_KEY_ENV}",
            status=e.status_code,
        ) from None
    except together.APIConnectionError as e:
        raise TrainerError(
            f"cannot reach the Together API at {base_url} to {action} ({e.message}); "
            f"check --base-url / {BASE_URL_ENV} and the network, then run the same command again"
        ) from None
    except together.NotFoundError as e:
        raise NotOnService(_status_message(action, e)) from None
    except together.APIStatusError as e:
        raise TrainerError(_status_message(action, e)) from None
    except together.lib.FileTypeError as e:
        raise CheckError(f"the Together SDK refused the file: {e}") from None


def _status_message(action: str, error: together.APIStatusError) -> str:
    status = error.status_code
    detail = f"could not {action}: HTTP {status}: {server_message(error)}"
    if status == 402:
        return f"{detail}; add credit to the Together account, then run the same command again"
    if status == 429 or status >= 500:
        return f"{detail}; the service is busy or failing: run the same command again later (it resumes)"
    if status == 404:
        return f"{detail}; check the model name (--model) or the recorded ids (distill train --status)"
    return f"{detail}; check the flags of distill train"
