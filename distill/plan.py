"""How a conversation becomes teacher requests, and how the answers become the conversation that is written.

Under ``history="teacher"`` (the default, as in the Llama-2-7B-32K-Chat recipe) request *k* carries
``[system?, u1, t1, ..., u(k-1), t(k-1), uk]``, where the *t* are the teacher's own earlier answers: the turns
depend on each other and go one after another. Under ``history="original"`` request *k* carries the dataset's own
assistant turns as history, so every turn is independent and they all go at once.

With ``api="completions"`` the same messages are rendered in the Llama-2 ``[INST]`` form and ``[INST]`` is added
as a stop sequence, as the original recipe did.
"""

from __future__ import annotations

from collections.abc import Sequence

from .conversation import Conversation, Message
from .requests import TeacherRequest
from .settings import RunSettings

LLAMA2_STOP = ("[INST]",)


def system_of(conversation: Conversation, settings: RunSettings) -> str | None:
    return settings.system_prompt if settings.system_prompt is not None else conversation.system


def history_for(
    conversation: Conversation, settings: RunSettings, turn: int, answers: Sequence[str]
) -> list[tuple[str, str]]:
    """The messages of request ``turn`` (0-based): the system prompt, earlier turns, then user turn ``turn``."""
    users = conversation.user_turns
    earlier = answers if settings.history == "teacher" else conversation.assistant_turns
    messages: list[tuple[str, str]] = []
    system = system_of(conversation, settings)
    if system:
        messages.append(("system", system))
    for k in range(turn):
        messages.append(("user", users[k]))
        messages.append(("assistant", earlier[k]))
    messages.append(("user", users[turn]))
    return messages


def request_for(
    conversation: Conversation, settings: RunSettings, turn: int, answers: Sequence[str] = ()
) -> TeacherRequest:
    messages = history_for(conversation, settings, turn, answers)
    if settings.api == "chat":
        return TeacherRequest("chat", settings.model, settings.sampling.params(), messages=tuple(messages))
    from formats.writers.llama2 import render_llama2

    prompt = render_llama2([Message(r, c) for r, c in messages])
    return TeacherRequest("completions", settings.model, settings.sampling.params(LLAMA2_STOP), prompt=prompt)


def turn_count(conversation: Conversation, settings: RunSettings) -> int:
    """How many requests the conversation needs: one per user turn (under ``original``, per answered turn too)."""
    users = len(conversation.user_turns)
    if settings.history == "original":
        return min(users, len(conversation.assistant_turns) + 1)
    return users


def distilled(conversation: Conversation, settings: RunSettings, answers: Sequence[str]) -> Conversation:
    """The conversation to write: system prompt, then each user turn followed by the teacher's answer."""
    messages: list[Message] = []
    system = system_of(conversation, settings)
    if system:
        messages.append(Message("system", system))
    for user, answer in zip(conversation.user_turns, answers, strict=False):
        messages.append(Message("user", user))
        messages.append(Message("assistant", answer))
    return Conversation(conversation.id, messages, conversation.source, conversation.meta)
