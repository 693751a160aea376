"""OpenAI/Together conversational JSONL: ``{"messages": [{"role": ..., "content": ...}, ...]}`` per line.

``content`` is a string or a list of parts; text parts (``{"type": "text", "text": ...}``, or ``"value"`` as
LLaMA-Factory writes it, or bare strings) are concatenated as chat templates do, and any other part (an image,
audio) rejects the record. A message's ``weight`` (or LLaMA-Factory's ``loss_weight``) must be 0 or 1 and is
kept. An assistant message that only carries ``tool_calls`` is a tool call, a ``tool``/``function`` message a
tool result: both follow ``--reader-opt tools=drop|keep|reject``. Other keys are ignored. A JSON list or a single
object with a ``messages`` key is read too. The id is the record's ``id`` (or ``conversation_id``...), else a hash
of the cleaned messages. Clean-up follows :mod:`formats.readers.normalise`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from distill.conversation import Conversation

from .base import READERS
from .normalise import BadRecord, Turn, build_messages, parse_weight, record_id, tools_policy
from .records import RecordReader


@READERS.register("messages")
class MessagesReader(RecordReader):
    """Reads ``{"messages": [...]}`` records (OpenAI / Together fine-tuning format)."""

    name = "messages"

    @classmethod
    def claims(cls, record: Mapping[str, Any]) -> bool:
        messages = record.get("messages")
        return isinstance(messages, list) and bool(messages) and isinstance(messages[0], dict)

    def check_options(self) -> None:
        self.tools = tools_policy(self.options.extra)

    def convert(self, source: str, record: dict[str, Any]) -> Conversation:
        raw = record.get("messages")
        if not isinstance(raw, list):
            raise BadRecord("no 'messages' list in the record")
        messages = build_messages(
            [_turn(m) for m in raw], tools=self.tools, system_prompt=self.options.system_prompt
        )
        return Conversation(id=record_id(record, messages), messages=messages, source=source)


def _turn(raw: Any) -> Turn:
    if not isinstance(raw, dict):
        raise BadRecord(f"a message must be a JSON object, got {type(raw).__name__}")
    role = raw.get("role")
    if role is None:
        raise BadRecord("a message has no 'role'")
    text = content_text(raw.get("content"))
    weight = raw.get("weight", raw.get("loss_weight"))  # a "weight" of null hides "loss_weight"
    if weight is not None:
        weight = parse_weight(weight)
    if role == "assistant" and raw.get("tool_calls") and not text.strip():
        return Turn("tool_call", json.dumps(raw["tool_calls"], ensure_ascii=False), weight)
    return Turn(role, text, weight)


def content_text(content: Any) -> str:
    """The text of a message's ``content``: a string, None (no text) or a list of text parts."""
    if isinstance(content, str):  # the usual case first
        return content
    if content is None:
        return ""
    if not isinstance(content, list):
        raise BadRecord(f"'content' must be a string or a list of parts, got {type(content).__name__}")
    texts = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict):
            raise BadRecord(f"a content part must be an object or a string, got {type(part).__name__}")
        kind = part.get("type", "text")
        if kind != "text":
            raise BadRecord(f"content part of type {kind!r} is not supported (text only)")
        text = part.get("text", part.get("value"))
        if not isinstance(text, str):
            raise BadRecord("a text part has no string 'text'")
        texts.append(text)
    return "".join(texts)
