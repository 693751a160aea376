"""The clean-up every chat reader applies, so every conversation reaches the engine in one shape.

A reader turns a record into a list of :class:`Turn` (role as the source spelled it, text, weight) and calls
:func:`build_messages`. The policy, applied in this order (also in ``docs/formats.md``):

1. **Text**: zero-width spaces (U+200B) and byte-order marks (U+FEFF) are removed everywhere; lone surrogates
   (from ``\\ud800``-style escapes or undecodable bytes) become U+FFFD. Nothing else is changed: leading and
   trailing whitespace stays as the source had it.
2. **Roles**: the source's role name is looked up case-insensitively in :data:`ROLE_ALIASES` (``human``/``user``,
   ``gpt``/``chatgpt``/``bing``/``bard``/``assistant``/``model``, ``system``/``developer``, and the tool roles
   ``function_call``/``observation``/``tool``/``function``/``tool_call``/``tool_response``). Any other role rejects
   the record, naming the role.
3. **Tool turns**, by the reader option ``tools``: ``drop`` (default) removes them; ``keep`` keeps calls as
   assistant turns and results as user turns, text unchanged; ``reject`` rejects a record that has any.
4. **Empty turns**: a turn whose text is empty or only whitespace after step 1 is removed.
5. **System turns**: those before the first user or assistant turn become the system prompt (joined with a blank
   line); a system turn later in the conversation is removed (trainers accept a system message only first). The
   reader option ``system_prompt`` replaces the system prompt, or supplies one where there is none (``""``
   removes it).
6. **Leading assistant turns** (a conversation that starts with the assistant) are removed.
7. **The same role twice in a row**: the turns are merged into one, texts joined with a blank line (``"\\n\\n"``);
   the merged weight is the largest of the weights given (a part that was trained on stays trained on).
8. A record left with **no user turn** is rejected. A trailing user turn is kept: the teacher answers it.

The result: an optional system message, then user and assistant strictly alternating from a user turn.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal, NamedTuple

from distill.conversation import Message
from distill.errors import DistillError, UsageError

Kind = Literal["system", "user", "assistant", "tool_call", "tool_result"]

ROLE_ALIASES: dict[str, Kind] = {
    "system": "system",
    "developer": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "function_call": "tool_call",
    "tool_call": "tool_call",
    "observation": "tool_result",
    "tool": "tool_result",
    "function": "tool_result",
    "tool_response": "tool_result",
}

TOOL_POLICIES = ("drop", "keep", "reject")
ID_KEYS = ("id", "conversation_id", "conversationId", "conv_id", "uuid", "_id")
TURN_SEPARATOR = "\n\n"

_INVISIBLE = re.compile("[\u200b\ufeff]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class BadRecord(DistillError):
    """A record a reader cannot use; the reader yields it as a Reject with this message as the reason."""


class Turn(NamedTuple):
    """One turn as the source had it: ``role`` is the source's spelling (a tuple: readers make one per message)."""

    role: str
    text: str
    weight: int | None = None


def clean_text(text: str) -> str:
    """Remove zero-width spaces and BOMs; replace lone surrogates with U+FFFD."""
    if text.isascii():
        return text
    # a str holds a surrogate only when it is unpaired: the JSON decoders combine escaped pairs
    return _LONE_SURROGATE.sub("\ufffd", _INVISIBLE.sub("", text))


def tools_policy(extra: Mapping[str, Any]) -> str:
    """The ``tools`` reader option, checked."""
    policy = str(extra.get("tools", "drop"))
    if policy not in TOOL_POLICIES:
        raise UsageError(f"--reader-opt tools={policy} is not valid; use one of: {', '.join(TOOL_POLICIES)}")
    return policy


def parse_weight(value: Any) -> int | None:
    """A per-message weight as Together wants it (0 or 1), from ``weight``/``loss_weight`` values."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value not in (0, 1):
        raise BadRecord(f"message weight must be 0 or 1, got {value!r}")
    return int(value)


def build_messages(
    turns: Iterable[Turn], *, tools: str = "drop", system_prompt: str | None = None
) -> list[Message]:
    """Apply the module's policy to ``turns``; raise :class:`BadRecord` when the record cannot be used.

    One pass: every reader calls this for every record, so it builds no intermediate list of turns.
    """
    system_parts: list[str] = []
    body: list[list[Any]] = []  # [kind, text, weight], merged as they come
    started = False  # a user or assistant turn was seen: a system turn now is dropped
    has_user = False
    for role, text, weight in turns:
        kind = _kind_of(role)
        if kind == "tool_call" or kind == "tool_result":
            if tools == "reject":
                raise BadRecord(f"has a tool turn ({role!r}) and the reader option tools=reject")
            if tools == "drop":
                continue
            kind = "assistant" if kind == "tool_call" else "user"
        text = clean_text(text)
        if not text or text.isspace():
            continue
        if kind == "system":
            if not started:
                system_parts.append(text)
            continue
        started = True
        if not body:
            if kind == "assistant":
                continue  # a leading assistant turn
        elif body[-1][0] == kind:
            _merge(body[-1], text, weight)
            continue
        has_user = has_user or kind == "user"
        body.append([kind, text, weight])
    if not has_user:
        raise BadRecord(
            "no user turn left after clean-up (empty, system-only or assistant-only conversation)"
        )
    system = system_prompt if system_prompt is not None else TURN_SEPARATOR.join(system_parts) or None
    messages = [Message("system", system)] if system else []
    messages.extend([Message(kind, text, weight) for kind, text, weight in body])
    return messages


def _merge(last: list[Any], text: str, weight: int | None) -> None:
    """The same role twice in a row: one turn, texts joined; the larger weight of those given."""
    last[1] = last[1] + TURN_SEPARATOR + text
    if weight is not None:
        last[2] = weight if last[2] is None else max(last[2], weight)


def _kind_of(role: Any) -> Kind:
    kind = ROLE_ALIASES.get(role) if type(role) is str else None  # the usual case: a role spelled as listed
    if kind is not None:
        return kind
    if not isinstance(role, str):
        raise BadRecord(f"role must be a string, got {type(role).__name__}")
    kind = ROLE_ALIASES.get(role.strip().lower())
    if kind is None:
        raise BadRecord(f"unknown role {role!r}; known roles: {', '.join(ROLE_ALIASES)}")
    return kind


def record_id(record: Mapping[str, Any], messages: list[Message]) -> str:
    """The record's own id (the first of :data:`ID_KEYS` that is a non-empty string or an integer), else a hash.

    The hash is ``sha256:`` and the first 32 hex digits of the SHA-256 of the canonical JSON of the cleaned
    messages, so the same conversation gets the same id in every run and every file.
    """
    for key in ID_KEYS:
        value = record.get(key)
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    return content_id([m.to_dict() for m in messages])


def content_id(content: Any) -> str:
    """``sha256:<32 hex>`` of the canonical JSON of ``content``."""
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]
