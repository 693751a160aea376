"""``llama2``: ``{"text": ...}`` in Meta's Llama-2-chat format, as the Together distillation recipe trained on.

The text is byte-identical to rendering the ``chat_template`` of meta-llama/Llama-2-7b-chat-hf (shipped as
``formats/templates/llama2-chat.jinja``) with bos ``<s>`` and eos ``</s>``::

    <s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user 1} [/INST] {assistant 1} </s><s>[INST] {user 2} [/INST] ...

It is computed in plain Python (rendering the template with Jinja is some 35 times slower); the tests hold the
two equal. As in the template, each turn is stripped of surrounding whitespace (the first user turn together
with the system block in front of it), and roles that do not alternate user/assistant from a user turn are
refused (:class:`~formats.writers.base.RenderError`).
"""

from __future__ import annotations

from typing import Any

from distill.conversation import Conversation, Message
from distill.llama2 import BOS, EOS, render_llama2

from .base import WRITERS, RenderError, Writer

__all__ = ["BOS", "EOS", "Llama2Writer", "parse_llama2", "render_llama2"]

TEMPLATE = "llama2-chat.jinja"


def parse_llama2(text: str, bos: str = BOS, eos: str = EOS) -> list[Message]:
    """The messages a Llama-2-chat text was rendered from (the inverse of :func:`render_llama2`).

    Exact for conversations whose turns have no surrounding whitespace and contain none of the markers
    (``[INST]``, ``[/INST]``, ``<<SYS>>``, bos, eos); raises :class:`RenderError` on text not in this format.
    """
    opening, closing = f"{bos}[INST] ", " [/INST]"
    messages: list[Message] = []
    pos = 0
    while pos < len(text):
        if not text.startswith(opening, pos):
            raise RenderError(f"expected {opening!r} at character {pos}")
        end = text.find(closing, pos)
        if end < 0:
            raise RenderError(f"no {closing!r} after character {pos}")
        user = text[pos + len(opening) : end]
        if not messages and user.startswith("<<SYS>>\n") and "\n<</SYS>>\n\n" in user:
            system, _, user = user[len("<<SYS>>\n") :].partition("\n<</SYS>>\n\n")
            messages.append(Message("system", system))
        messages.append(Message("user", user))
        pos = end + len(closing)
        if text.startswith(" ", pos):
            answer_end = text.find(f" {eos}", pos + 1)
            if answer_end < 0:
                raise RenderError(f"no {eos!r} after the answer at character {pos}")
            messages.append(Message("assistant", text[pos + 1 : answer_end]))
            pos = answer_end + len(eos) + 1
    return messages


@WRITERS.register("llama2")
class Llama2Writer(Writer):
    """Writes each conversation as ``{"text": <Llama-2-chat rendering>}``."""

    name = "llama2"

    def render(self, conversation: Conversation) -> dict[str, Any]:
        return {"text": render_llama2(conversation.messages)}
