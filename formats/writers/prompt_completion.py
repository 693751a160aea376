"""``prompt-completion``: ``{"prompt": ..., "completion": ...}``, Together's single-turn instruction format.

One exchange per line: the prompt is the user turn (after the system prompt and a blank line, when there is
one) and the completion the assistant's answer. A conversation with more than one exchange cannot be written
this way and raises :class:`~formats.writers.base.RenderError` (use ``messages`` for multi-turn data).
"""

from __future__ import annotations

from typing import Any

from distill.conversation import Conversation

from .base import WRITERS, RenderError, Writer

SYSTEM_SEPARATOR = "\n\n"


@WRITERS.register("prompt-completion")
class PromptCompletionWriter(Writer):
    """Writes a single-turn conversation as a prompt and its completion."""

    name = "prompt-completion"

    def refusal(self, conversation: Conversation) -> str | None:
        users = sum(m.role == "user" for m in conversation.messages)
        if users == 1:
            return None
        return (
            f"prompt-completion holds one user turn and its answer; this conversation has {users} user turns: "
            "use --output-format messages for multi-turn data"
        )

    def render(self, conversation: Conversation) -> dict[str, Any]:
        roles = [m.role for m in conversation.messages if m.role != "system"]
        if roles != ["user", "assistant"]:
            raise RenderError(
                f"prompt-completion holds one user turn and its answer; conversation {conversation.id} has "
                f"{roles.count('user')} user and {roles.count('assistant')} assistant turns: "
                "use --output-format messages for multi-turn data"
            )
        system = conversation.system
        user, assistant = conversation.user_turns[0], conversation.assistant_turns[0]
        prompt = f"{system}{SYSTEM_SEPARATOR}{user}" if system else user
        return {"prompt": prompt, "completion": assistant}
