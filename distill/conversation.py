"""The neutral record types that flow from readers through the engine to writers.

A reader turns whatever a dataset looks like into :class:`Conversation` objects (or :class:`Reject` for a record
it cannot use). The engine only ever sees these, so a new dataset format is a new reader and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")


@dataclass(frozen=True, slots=True)
class Message:
    """One turn. ``weight`` is Together's per-message loss weight (0 or 1) where the source had one."""

    role: Role
    content: str
    weight: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.weight is not None:
            d["weight"] = self.weight
        return d


@dataclass(slots=True)
class Conversation:
    """A conversation as read from a dataset.

    ``messages`` holds an optional leading system message, then turns as the source had them after the reader's
    clean-up policy: user and assistant alternate and the first non-system turn is a user turn. The assistant
    turns are the dataset's own answers; under ``--history teacher`` the engine ignores them.

    ``id`` is stable across runs (the source's id, or a hash of the content); ``source`` says where the record
    came from (``file:line`` or ``file#index``); ``meta`` carries what evaluation needs (gold answers, reference
    summaries) and anything else the reader wants the manifest to keep.
    """

    id: str
    messages: list[Message]
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def system(self) -> str | None:
        if self.messages and self.messages[0].role == "system":
            return self.messages[0].content
        return None

    @property
    def user_turns(self) -> list[str]:
        return [m.content for m in self.messages if m.role == "user"]

    @property
    def assistant_turns(self) -> list[str]:
        return [m.content for m in self.messages if m.role == "assistant"]


@dataclass(frozen=True, slots=True)
class Reject:
    """A record a reader could not turn into a conversation: written to ``OUTPUT.rejects.jsonl``.

    ``ends_input`` marks a reject past which the file cannot be read (a truncated JSON list): every later record
    is lost, which a run reports as an error rather than as one rejected record.
    """

    source: str
    reason: str
    record: Any = None
    ends_input: bool = False

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"source": self.source, "reason": self.reason}
        if self.record is not None:
            d["record"] = self.record
        if self.ends_input:
            d["rest_of_input_lost"] = True
        return d


Record = Conversation | Reject


def limited(records: Iterator[Record], limit: int | None) -> Iterator[Record]:
    """``records`` up to ``limit`` conversations (rejects pass through and do not count)."""
    if limit is None:
        yield from records
        return
    taken = 0
    for record in records:
        if taken >= limit:
            return
        if isinstance(record, Conversation):
            taken += 1
        yield record
