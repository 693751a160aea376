"""Reading a fine-tuning file in one of Together's three SFT formats, for the local back-end.

A file holds one format throughout, told by the keys of each line: ``{"messages": [...]}``,
``{"prompt": str, "completion": str}`` or ``{"text": str}``. This module needs no torch: it only parses and
checks what training will need, and names the line of anything wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from distill.conversation import ROLES, Message
from distill.errors import CheckError, InputError

DataFormat = Literal["messages", "prompt_completion", "text"]

_FORMAT_KEYS: dict[frozenset[str], DataFormat] = {
    frozenset({"messages"}): "messages",
    frozenset({"prompt", "completion"}): "prompt_completion",
    frozenset({"text"}): "text",
}


@dataclass(frozen=True, slots=True)
class TrainingRecord:
    """One line of a fine-tuning file. Only the fields of the file's format are filled."""

    source: str
    messages: tuple[Message, ...] = ()
    prompt: str = ""
    completion: str = ""
    text: str = ""


@dataclass(frozen=True, slots=True)
class TrainingData:
    """A whole fine-tuning file: its format and its records in file order."""

    path: Path
    format: DataFormat
    records: tuple[TrainingRecord, ...]


def read_training_file(path: Path) -> TrainingData:
    """Parse and check ``path``; raise :class:`CheckError` naming the first bad line."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read training file {path}: {e.strerror}; check --file") from None
    fmt: DataFormat | None = None
    records: list[TrainingRecord] = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        source = f"{path}:{number}"
        obj = _parse_line(line, source)
        line_format = _format_of(obj, source)
        if fmt is None:
            fmt = line_format
        elif line_format != fmt:
            raise CheckError(f"{source}: a {line_format} line in a {fmt} file; one file holds one format")
        records.append(_record(obj, line_format, source))
    if fmt is None:
        raise CheckError(f"{path}: no training examples; the file is empty")
    return TrainingData(path=path, format=fmt, records=tuple(records))


def _parse_line(line: bytes, source: str) -> dict[str, Any]:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        raise CheckError(f"{source}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise CheckError(f"{source}: each line must be a JSON object")
    return obj


def _format_of(obj: dict[str, Any], source: str) -> DataFormat:
    try:
        return _FORMAT_KEYS[frozenset(obj)]
    except KeyError:
        raise CheckError(
            f"{source}: keys {sorted(obj)} match no format; a line is "
            '{"messages": [...]}, {"prompt": ..., "completion": ...} or {"text": ...}'
        ) from None


def _record(obj: dict[str, Any], fmt: DataFormat, source: str) -> TrainingRecord:
    if fmt == "messages":
        return TrainingRecord(source=source, messages=_messages(obj["messages"], source))
    if fmt == "prompt_completion":
        return TrainingRecord(
            source=source,
            prompt=_string(obj["prompt"], "prompt", source),
            completion=_string(obj["completion"], "completion", source),
        )
    return TrainingRecord(source=source, text=_string(obj["text"], "text", source))


def _string(value: Any, key: str, source: str) -> str:
    if not isinstance(value, str):
        raise CheckError(f"{source}: {key!r} must be a string, not {type(value).__name__}")
    return value


def _messages(value: Any, source: str) -> tuple[Message, ...]:
    if not isinstance(value, list) or not value:
        raise CheckError(f"{source}: 'messages' must be a non-empty list")
    messages = tuple(_message(m, f"{source} message {i}") for i, m in enumerate(value))
    first_turn = next((m for m in messages if m.role != "system"), None)
    if first_turn is None or first_turn.role != "user":
        raise CheckError(f"{source}: the first message after the system prompt must be a user message")
    if not any(m.role == "assistant" for m in messages):
        raise CheckError(f"{source}: no assistant message to train on")
    return messages


def _message(value: Any, where: str) -> Message:
    if not isinstance(value, dict):
        raise CheckError(f"{where}: must be an object with 'role' and 'content'")
    role, content, weight = value.get("role"), value.get("content"), value.get("weight")
    if role not in ROLES:
        raise CheckError(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
    if not isinstance(content, str):
        raise CheckError(f"{where}: 'content' must be a string")
    if weight is not None and (type(weight) is not int or weight not in (0, 1)):
        raise CheckError(f"{where}: 'weight' must be 0 or 1, not {weight!r}")
    return Message(role=role, content=content, weight=weight)
