"""ShareGPT: ``{"conversations": [{"from": "human", "value": "..."}, ...]}`` records.

The file may be a JSON list, a single JSON object or JSONL (see :mod:`formats.readers.jsonstream`); it is read as a
stream. The turns list is ``conversations`` (or ``conversation``/``items``); a turn is ``{"from", "value"}`` (or
``{"role", "content"}``). A record-level ``system`` string (LLaMA-Factory's layout) is a leading system turn.
Every other key of a record or a turn is ignored. The id is the record's ``id`` (or ``conversation_id``...), else
a hash of the cleaned messages.

Messy data is handled by the policy of :mod:`formats.readers.normalise` (empty and zero-width turns removed,
conversations starting with the assistant trimmed, repeated roles merged, system banners to the system prompt,
tool turns by ``--reader-opt tools=drop|keep|reject``, unknown roles rejected). A record that cannot be used
becomes a :class:`~distill.conversation.Reject` with its reason; reading never stops on a bad record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from distill.conversation import Conversation

from .base import READERS
from .normalise import BadRecord, Turn, build_messages, record_id, tools_policy
from .records import RecordReader

TURNS_KEYS = ("conversations", "conversation", "items")


@READERS.register("sharegpt")
class ShareGPTReader(RecordReader):
    """Reads ShareGPT conversations (JSON list, single object or JSONL)."""

    name = "sharegpt"

    @classmethod
    def claims(cls, record: Mapping[str, Any]) -> bool:
        turns = _turns_of(record)
        return bool(turns) and isinstance(turns[0], dict) and "from" in turns[0]

    def check_options(self) -> None:
        self.tools = tools_policy(self.options.extra)

    def convert(self, source: str, record: dict[str, Any]) -> Conversation:
        turns = _turns_of(record)
        if turns is None:
            raise BadRecord("no 'conversations' list in the record")
        parsed = [_turn(t) for t in turns]
        system = record.get("system")
        if isinstance(system, str) and system.strip():
            parsed.insert(0, Turn("system", system))
        messages = build_messages(parsed, tools=self.tools, system_prompt=self.options.system_prompt)
        return Conversation(id=record_id(record, messages), messages=messages, source=source)


def _turns_of(record: Mapping[str, Any]) -> list[Any] | None:
    for key in TURNS_KEYS:
        turns = record.get(key)
        if isinstance(turns, list):
            return turns
    return None


def _turn(raw: Any) -> Turn:
    if not isinstance(raw, dict):
        raise BadRecord(f"a turn must be a JSON object, got {type(raw).__name__}")
    role = raw.get("from", raw.get("role"))
    if role is None:
        raise BadRecord("a turn has no 'from' key")
    text = raw.get("value", raw.get("content"))
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise BadRecord(f"a turn's 'value' must be a string, got {type(text).__name__}")
    return Turn(role, text)
