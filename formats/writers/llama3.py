"""``llama3``: ``{"text": ...}`` in Meta's Llama-3 Instruct format, as the HintEval recipe trained on.

The text is byte-identical to rendering the ``chat_template`` of meta-llama/Meta-Llama-3-8B-Instruct (shipped as
``formats/templates/llama3-instruct.jinja``) with bos ``<|begin_of_text|>`` and no generation prompt::

    <|begin_of_text|><|start_header_id|>system<|end_header_id|>\\n\\n{system}<|eot_id|><|start_header_id|>user...

Each message's content is stripped of surrounding whitespace (the template's ``trim``); every role is written as
it is, so unlike Llama-2 the template itself refuses nothing. Computed in plain Python; the tests hold it equal to
the Jinja rendering.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from distill.conversation import Conversation, Message

from .base import WRITERS, RenderError, Writer

BOS = "<|begin_of_text|>"
TEMPLATE = "llama3-instruct.jinja"
_TURN = re.compile(
    r"<\|start_header_id\|>(system|user|assistant)<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>", re.S
)


def render_llama3(messages: Sequence[Message], bos: str = BOS) -> str:
    """The Llama-3 Instruct template's output for ``messages`` (without a generation prompt)."""
    text = "".join(
        f"<|start_header_id|>{m.role}<|end_header_id|>\n\n{m.content.strip()}<|eot_id|>" for m in messages
    )
    return bos + text if messages else ""


def parse_llama3(text: str, bos: str = BOS) -> list[Message]:
    """The messages a Llama-3 Instruct text was rendered from (exact for stripped turns without the markers)."""
    if not text:
        return []
    if not text.startswith(bos):
        raise RenderError(f"a Llama-3 text starts with {bos!r}")
    pos, messages = len(bos), []
    while pos < len(text):
        match = _TURN.match(text, pos)
        if match is None:
            raise RenderError(f"expected a Llama-3 turn at character {pos}")
        messages.append(Message(match.group(1), match.group(2)))  # type: ignore[arg-type]
        pos = match.end()
    return messages


@WRITERS.register("llama3")
class Llama3Writer(Writer):
    """Writes each conversation as ``{"text": <Llama-3 Instruct rendering>}``."""

    name = "llama3"

    def render(self, conversation: Conversation) -> dict[str, Any]:
        if not conversation.messages:
            raise RenderError("an empty conversation cannot be rendered")
        return {"text": render_llama3(conversation.messages)}
