"""The files of a batch: input parts split under the provider's limits, and the result lines read back.

An input line's ``custom_id`` is the request's cache key (64 hex characters, the limit both providers set),
so a result goes into the cache under the key of the request that asked for it; the request itself is rebuilt
from the line's body and checked against that key before anything is stored.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from distill.client import parse_answer
from distill.errors import CacheError, MalformedResponse, UsageError
from distill.requests import SAMPLING_PARAMS, ApiKind, TeacherRequest, TeacherResponse, sampling_params


@dataclass(slots=True)
class Part:
    """One input file: its path, request count, size, the keys it carries and (under a budget) its estimated cost."""

    path: Path
    requests: int = 0
    bytes: int = 0
    keys: list[str] = field(default_factory=list)
    estimate: float = 0.0


class PartWriter:
    """Writes request lines into files of at most ``max_requests`` lines and ``max_bytes`` bytes each."""

    def __init__(self, directory: Path, stem: str, max_requests: int, max_bytes: int) -> None:
        self.directory = directory
        self.stem = stem
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.parts: list[Part] = []
        self._file = None

    def add(self, key: str, line: dict[str, Any]) -> Part:
        """Write ``line`` into the current part, or into a new one when it would go over a limit."""
        data = orjson.dumps(line) + b"\n"
        if len(data) > self.max_bytes:
            raise UsageError(
                f"request {key[:12]}... is {len(data):,} bytes, over the batch file limit of {self.max_bytes:,}; "
                "run it without --batch"
            )
        part = self.parts[-1] if self.parts else None
        if part is None or part.requests >= self.max_requests or part.bytes + len(data) > self.max_bytes:
            part = self._next_part()
        self._file.write(data)
        part.requests += 1
        part.bytes += len(data)
        part.keys.append(key)
        return part

    def _next_part(self) -> Part:
        self._close_file()
        part = Part(self.directory / f"{self.stem}-{len(self.parts) + 1:03d}.jsonl")
        self._file = open(part.path, "wb")  # noqa: SIM115 - closed when the next part starts or by close()
        self.parts.append(part)
        return part

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def close(self) -> list[Part]:
        self._close_file()
        return self.parts


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSONL file (blank lines skipped; a line that is not an object is an error)."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise MalformedResponse(f"{path.name} line {number} is not JSON") from None
            if not isinstance(obj, dict):
                raise MalformedResponse(f"{path.name} line {number} is not a JSON object")
            yield obj


def rebuild_request(line: dict[str, Any]) -> TeacherRequest:
    """The request an input line was written from; its key must be the line's ``custom_id``."""
    body = line.get("body") or {}
    api: ApiKind = "chat" if "messages" in body else "completions"
    params = sampling_params(**{name: body[name] for name in SAMPLING_PARAMS if name in body})
    if api == "chat":
        messages = tuple((m["role"], m["content"]) for m in body["messages"])
        request = TeacherRequest("chat", body["model"], params, messages=messages)
    else:
        request = TeacherRequest("completions", body["model"], params, prompt=body["prompt"])
    if request.key != line.get("custom_id"):
        raise CacheError(
            f"a batch input line (custom_id {str(line.get('custom_id'))[:16]}...) does not rebuild the request it "
            "was written from; was the file under the cache's .batches directory edited?"
        )
    return request


@dataclass(frozen=True, slots=True)
class Result:
    """One result line: an answer, or why there is none and whether sending it again may help."""

    custom_id: str
    response: TeacherResponse | None = None
    reason: str = ""
    status: int | None = None
    transient: bool = True


def parse_result(obj: dict[str, Any], api: ApiKind) -> Result:
    """Read an output or error line (OpenAI's shape; also a bare ``{"custom_id", "error"}``)."""
    custom_id = str(obj.get("custom_id") or "")
    response = obj.get("response") if isinstance(obj.get("response"), dict) else None
    error = obj.get("error")
    status = _int(response.get("status_code")) if response else None
    body = response.get("body") if response else None
    if response and not error and status in (200, None) and isinstance(body, dict):
        try:
            return Result(custom_id, parse_answer(api, orjson.dumps(body)))
        except MalformedResponse as e:
            return Result(custom_id, reason=str(e), status=status)
    message, code = _error_text(body, error)
    if status is None and isinstance(error, dict):
        status = _int(error.get("status")) or _int(error.get("code"))
    reason = f"batch request failed{f' ({status})' if status else ''}: {message or code or 'no reason given'}"
    transient = status is None or status in (408, 429) or status >= 500
    return Result(custom_id, reason=reason, status=status, transient=transient)


def _error_text(body: Any, error: Any) -> tuple[str, str]:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        inner = body["error"]
        return str(inner.get("message") or ""), str(inner.get("code") or inner.get("type") or "")
    if isinstance(error, dict):
        return str(error.get("message") or ""), str(error.get("code") or "")
    if isinstance(error, str):
        return error, ""
    return "", ""


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None
