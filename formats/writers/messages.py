"""``messages``: ``{"messages": [{"role", "content"[, "weight"]}, ...]}``, the Together/OpenAI conversational format.

Nothing else goes on the line (Together rejects extra keys); a message's ``weight`` is written only when it has one.
"""

from __future__ import annotations

from typing import Any

from distill.conversation import Conversation

from .base import WRITERS, Writer


@WRITERS.register("messages")
class MessagesWriter(Writer):
    """Writes each conversation as one ``{"messages": [...]}`` object."""

    name = "messages"

    def render(self, conversation: Conversation) -> dict[str, Any]:
        return {"messages": [m.to_dict() for m in conversation.messages]}
