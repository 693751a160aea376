"""The data rules the fake service applies to an uploaded fine-tuning file, as Together documents them.

One format per file, told apart by its keys: ``{"text"}`` (general), ``{"messages"}`` (conversation),
``{"prompt","completion"}`` (instruction), or the preference layout ``{"input","preferred_output",
"non_preferred_output"}``. Conversation messages carry string ``role`` and ``content``; roles are system, user and
assistant; a system message may only come first; user and assistant then alternate, starting with user; there is
at least one assistant message; the optional per-message ``weight`` is the integer 0 or 1. Keys beyond these are
ignored. Only ``.jsonl`` content is checked; the result has the shape of the service's ``validation_report``.
"""

from __future__ import annotations

import json
from typing import Any

FORMAT_BY_KEYS: tuple[tuple[str, frozenset[str]], ...] = (
    ("PREFERENCE", frozenset({"input", "preferred_output", "non_preferred_output"})),
    ("CONVERSATION", frozenset({"messages"})),
    ("INSTRUCTION", frozenset({"prompt", "completion"})),
    ("GENERAL", frozenset({"text"})),
)
ROLES = frozenset({"system", "user", "assistant"})


class RuleBroken(Exception):
    """One line breaks a data rule; the message says which and how."""


def line_format(record: Any) -> str:
    """The dataset format a parsed line is in."""
    if not isinstance(record, dict):
        raise RuleBroken(f"expected a JSON object, found {type(record).__name__}")
    for name, keys in FORMAT_BY_KEYS:
        if keys <= record.keys():
            return name
    raise RuleBroken(
        'has none of the keys of a known format ("messages", "text", "prompt"+"completion", '
        '"input"+"preferred_output"+"non_preferred_output")'
    )


def check_messages(messages: Any, *, needs_assistant: bool = True) -> bool:
    """Check one conversation; True when a message carries a ``weight``."""
    if not isinstance(messages, list) or not messages:
        raise RuleBroken('"messages" must be a non-empty list')
    has_weight = False
    previous: str | None = None
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RuleBroken(f"message {index} is not an object")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise RuleBroken(f'message {index} needs string "role" and "content"')
        if role not in ROLES:
            raise RuleBroken(f"message {index} has unknown role {role!r} (use system, user or assistant)")
        if role == "system" and index != 0:
            raise RuleBroken(f"message {index}: a system message may only come first")
        if role != "system" and role == previous:
            raise RuleBroken(
                f"message {index}: two {role} messages in a row; user and assistant must alternate"
            )
        if role == "assistant" and previous in (None, "system"):
            raise RuleBroken(f"message {index}: the conversation must start with a user message")
        if "weight" in message:
            weight = message["weight"]
            if isinstance(weight, bool) or weight not in (0, 1):
                raise RuleBroken(f'message {index}: "weight" must be the integer 0 or 1')
            has_weight = True
        previous = role
    if needs_assistant and not any(m["role"] == "assistant" for m in messages):
        raise RuleBroken("the conversation has no assistant message")
    return has_weight


def check_line(record: dict[str, Any], fmt: str) -> bool:
    """Check one line in format ``fmt``; True when it carries message weights."""
    if fmt == "CONVERSATION":
        return check_messages(record["messages"])
    if fmt == "INSTRUCTION":
        if not isinstance(record["prompt"], str) or not isinstance(record["completion"], str):
            raise RuleBroken('"prompt" and "completion" must be strings')
        return False
    if fmt == "GENERAL":
        if not isinstance(record["text"], str):
            raise RuleBroken('"text" must be a string')
        return False
    inputs = record["input"]
    if not isinstance(inputs, dict):
        raise RuleBroken('"input" must be an object with "messages"')
    check_messages(inputs.get("messages"), needs_assistant=False)
    for key in ("preferred_output", "non_preferred_output"):
        output = record[key]
        if not (isinstance(output, list) and len(output) == 1 and isinstance(output[0], dict)):
            raise RuleBroken(f'"{key}" must be a list holding one assistant message')
        if output[0].get("role") != "assistant" or not isinstance(output[0].get("content"), str):
            raise RuleBroken(f'"{key}" must hold an assistant message with string content')
    return False


def validate_jsonl(data: bytes, file_id: str) -> dict[str, Any]:
    """The validation report of a JSONL file: ``valid`` and, when not, the first broken rule and its line."""
    report: dict[str, Any] = {"valid": False, "file_id": file_id, "nlines": 0}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        return _invalid(report, f"the file is not UTF-8 (byte {e.start})")
    fmt: str | None = None
    has_weights = False
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            this_format = line_format(record)
            if fmt is not None and this_format != fmt:
                raise RuleBroken(f"is in {this_format} format but the file began in {fmt} format")
            has_weights = check_line(record, this_format) or has_weights
        except json.JSONDecodeError as e:
            return _invalid(report, f"line {number}: not valid JSON ({e.msg})")
        except RuleBroken as e:
            return _invalid(report, f"line {number}: {e}")
        fmt = this_format
        report["nlines"] += 1
    if fmt is None:
        return _invalid(report, "the file holds no samples")
    report.update(valid=True, dataset_format=fmt, dataset_has_message_weights=has_weights)
    return report


def _invalid(report: dict[str, Any], message: str) -> dict[str, Any]:
    report.update(valid=False, error=message, error_type="INVALID_FORMAT")
    return report
