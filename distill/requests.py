"""Neutral teacher request and response types, and the cache key of a request.

A request's key is the sha256 of the canonical JSON of everything that determines the answer: the API kind, the
model, the sampling parameters and the exact messages (or prompt). Two requests with the same key are the same
question, whatever run, dataset or conversation they came from, so the teacher is paid for it once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

ApiKind = Literal["chat", "completions"]
_sha256 = hashlib.sha256
SAMPLING_PARAMS = ("max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "stop", "seed")


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True, slots=True)
class TeacherRequest:
    """One call to the teacher. Exactly one of ``messages`` (chat) or ``prompt`` (completions) is set."""

    api: ApiKind
    model: str
    params: tuple[tuple[str, Any], ...]
    messages: tuple[tuple[str, str], ...] | None = None
    prompt: str | None = None
    key: str = field(init=False, compare=False)
    identity_json: bytes = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        identity = canonical_json(self.identity())
        object.__setattr__(self, "identity_json", identity)
        object.__setattr__(self, "key", _sha256(identity).hexdigest())

    def identity(self) -> dict[str, Any]:
        """What determines the answer; hashed into ``key`` and stored in the cache (as ``identity_json``)."""
        ident: dict[str, Any] = {"api": self.api, "model": self.model, "params": dict(self.params)}
        if self.messages is not None:
            ident["messages"] = [{"role": r, "content": c} for r, c in self.messages]
        else:
            ident["prompt"] = self.prompt
        return ident

    def body(self) -> dict[str, Any]:
        """The JSON body for ``/chat/completions`` or ``/completions``."""
        body: dict[str, Any] = {"model": self.model}
        if self.messages is not None:
            body["messages"] = [{"role": r, "content": c} for r, c in self.messages]
        else:
            body["prompt"] = self.prompt
        body.update(self.params)
        return body


@dataclass(frozen=True, slots=True)
class TeacherResponse:
    """The teacher's answer to one request, with the usage the server reported (None when it reported none)."""

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
