"""``--shard I/N``: a deterministic split of a dataset over N machines, by conversation id.

Conversation ``c`` belongs to shard ``1 + (first 8 bytes of sha256(c.id)) mod N``, so every machine that reads
the same input agrees on the split without talking to the others, and a conversation stays in its shard when
the input grows. A reject (a record with no usable id) goes by its ``source`` (``file:line``), so each one is
reported by exactly one shard. Each shard runs with its own ``--cache``; ``distill merge`` joins the caches.

Shards keep the conversation's position in the whole input (not in the shard), so the merged cache exports the
conversations in input order.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from .conversation import Conversation, Reject
from .errors import UsageError

_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def bucket(key: str, count: int) -> int:
    """The 0-based bucket of ``key`` among ``count``: stable across machines, Python versions and runs."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 1 <= self.index <= self.count:
            raise UsageError(
                f"--shard takes I/N with 1 <= I <= N (e.g. 1/4 ... 4/4), got {self.index}/{self.count}"
            )

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"2/8"`` -> ``Shard(2, 8)``; a :class:`UsageError` naming ``--shard`` otherwise."""
        match = _SPEC.match(text or "")
        if match is None:
            raise UsageError(f"--shard takes I/N, e.g. --shard 1/4 (shards 1/4 to 4/4), got {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    def owns(self, conversation_id: str) -> bool:
        """Whether the conversation with this id is answered by this shard."""
        return bucket(conversation_id, self.count) == self.index - 1

    def owns_conversation(self, conversation: Conversation) -> bool:
        """Whether ``conversation`` is answered by this shard (by its id; see :class:`OpeningShard`)."""
        return self.owns(conversation.id)

    def owns_reject(self, reject: Reject) -> bool:
        """Whether this shard reports ``reject`` (each reject is reported by one shard only)."""
        return bucket("reject\x00" + reject.source, self.count) == self.index - 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True, slots=True)
class OpeningShard(Shard):
    """A shard chosen by how a conversation opens (its system prompt and first user turn), not by its id.

    Every request of a conversation starts with those two messages, so two conversations that could ever send the
    same request open the same way and land in the same shard: each distinct request is sent once for all shards
    together, as in one process (real datasets hold many conversations that open with the same "hi"). Every turn
    of a conversation stays in one shard. Cluster runs (``--ray``) split this way.
    """

    def owns_conversation(self, conversation: Conversation) -> bool:
        users = conversation.user_turns
        opening = f"opening\x00{conversation.system or ''}\x00{users[0] if users else ''}"
        return bucket(opening, self.count) == self.index - 1
