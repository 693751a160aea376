"""Neutral teacher request and response types, and the cache key of a request.

A request's key is the sha256 of the canonical JSON of everything that determines the answer: the API kind, the
model, the sampling parameters and the exact messages (or prompt). Two requests with the same key are the same
question, whatever run, dataset or conversation they came from, so the teacher is paid for it once.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal, NamedTuple

import orjson

ApiKind = Literal["chat", "completions"]
_sha256 = hashlib.sha256
SAMPLING_PARAMS = ("max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "stop", "seed")


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


class _RequestFields(NamedTuple):
    api: ApiKind
    model: str
    params: tuple[tuple[str, Any], ...]
    messages: tuple[tuple[str, str], ...] | None
    prompt: str | None
    key: str
    identity_json: bytes


class TeacherRequest(_RequestFields):
    """One call to the teacher. Exactly one of ``messages`` (chat) or ``prompt`` (completions) is set.

    ``key`` and ``identity_json`` are derived from the other fields when the request is made. A tuple (immutable,
    and made in a third less time than a frozen dataclass: the engine makes one per request).
    """

    __slots__ = ()

    def __new__(
        cls,
        api: ApiKind,
        model: str,
        params: tuple[tuple[str, Any], ...],
        messages: tuple[tuple[str, str], ...] | None = None,
        prompt: str | None = None,
    ) -> TeacherRequest:
        identity = canonical_json(_identity(api, model, params, messages, prompt))
        return tuple.__new__(
            cls, (api, model, params, messages, prompt, _sha256(identity).hexdigest(), identity)
        )

    def __getnewargs__(self) -> tuple[Any, ...]:  # pickle and copy make it anew from its own fields
        return tuple(self[:5])

    def _replace(self, **changes: Any) -> TeacherRequest:
        fields = dict(zip(("api", "model", "params", "messages", "prompt"), self[:5], strict=True))
        return TeacherRequest(**(fields | changes))

    def __repr__(self) -> str:
        return (
            f"TeacherRequest(api={self.api!r}, model={self.model!r}, params={self.params!r}, "
            f"messages={self.messages!r}, prompt={self.prompt!r}, key={self.key!r})"
        )

    def identity(self) -> dict[str, Any]:
        """What determines the answer; hashed into ``key`` and stored in the cache (as ``identity_json``)."""
        return _identity(self.api, self.model, self.params, self.messages, self.prompt)

    def body(self) -> dict[str, Any]:
        """The JSON body for ``/chat/completions`` or ``/completions``."""
        body: dict[str, Any] = {"model": self.model}
        if self.messages is not None:
            body["messages"] = [{"role": r, "content": c} for r, c in self.messages]
        else:
            body["prompt"] = self.prompt
        body.update(self.params)
        return body


def _identity(
    api: str,
    model: str,
    params: tuple[tuple[str, Any], ...],
    messages: tuple[tuple[str, str], ...] | None,
    prompt: str | None,
) -> dict[str, Any]:
    ident: dict[str, Any] = {"api": api, "model": model, "params": dict(params)}
    if messages is not None:
        ident["messages"] = [{"role": r, "content": c} for r, c in messages]
    else:
        ident["prompt"] = prompt
    return ident


class TeacherResponse(NamedTuple):
    """The teacher's answer to one request, with the usage the server reported (None when it reported none).

    A tuple: one is made per answer."""

    text: str
    finish_reason: str | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def sampling_params(**params: Any) -> tuple[tuple[str, Any], ...]:
    """The sampling parameters that were set, in a canonical order (unset ones are left to the server)."""
    unknown = set(params) - set(SAMPLING_PARAMS)
    if unknown:
        raise ValueError(f"unknown sampling parameters: {sorted(unknown)}")
    return tuple((name, params[name]) for name in SAMPLING_PARAMS if params.get(name) is not None)
