"""The Llama-2-chat rendering of a conversation: the prompt ``--api completions`` sends, and the ``llama2`` output.

Byte-identical to Meta's Llama-2-chat template with bos ``<s>`` and eos ``</s>`` (the writer
:mod:`formats.writers.llama2` documents the format and its tests hold the two equal).
"""

from __future__ import annotations

from collections.abc import Sequence

from .conversation import Message
from .errors import RenderError

BOS = "<s>"
EOS = "</s>"
ALTERNATION_ERROR = "Conversation roles must alternate user/assistant/user/assistant/..."


def render_llama2(messages: Sequence[Message], bos: str = BOS, eos: str = EOS) -> str:
    """The Llama-2-chat template's output for ``messages`` (without a generation prompt)."""
    if not messages:
        raise RenderError("an empty conversation cannot be rendered")
    system = messages[0].content if messages[0].role == "system" else None
    turns = messages[1:] if system is not None else messages
    parts: list[str] = []
    for index, message in enumerate(turns):
        if (message.role == "user") != (index % 2 == 0):
            raise RenderError(f"the chat template refused the conversation: {ALTERNATION_ERROR}")
        content = message.content
        if index == 0 and system is not None:
            content = f"<<SYS>>\n{system}\n<</SYS>>\n\n{content}"
        if message.role == "user":
            parts.append(f"{bos}[INST] {content.strip()} [/INST]")
        elif message.role == "assistant":
            parts.append(f" {content.strip()} {eos}")
    return "".join(parts)
