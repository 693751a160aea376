"""How a conversation becomes teacher requests, and how the answers become the conversation that is written.

Under ``history="teacher"`` (the default, as in the Llama-2-7B-32K-Chat recipe) request *k* carries
``[system?, u1, t1, ..., u(k-1), t(k-1), uk]``, where the *t* are the teacher's own earlier answers: the turns
depend on each other and go one after another. Under ``history="original"`` request *k* carries the dataset's own
assistant turns as history, so every turn is independent and they all go at once.

With ``api="completions"`` the same messages are rendered in the Llama-2 ``[INST]`` form and ``[INST]`` is added
as a stop sequence, as the original recipe did.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from .conversation import Conversation, Message
from .llama2 import render_llama2
from .requests import TeacherRequest, TeacherResponse
from .settings import RunSettings, Sampling

LLAMA2_STOP = ("[INST]",)
_PARAMS_MEMO: dict[tuple[Any, ...], tuple[tuple[str, Any], ...]] = {}
_sampling_values = attrgetter(*Sampling.__slots__)


def system_of(conversation: Conversation, settings: RunSettings) -> str | None:
    """The conversation's system prompt. ``--system-prompt`` was applied by the reader (a template such as
    CoQA's ``{story}`` needs the record), so the conversation already carries the one to send."""
    return conversation.system


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
        return TeacherRequest(
            "chat", settings.model, sampling_params(settings.sampling), messages=tuple(messages)
        )
    prompt = render_llama2([Message(r, c) for r, c in messages])
    params = sampling_params(settings.sampling, LLAMA2_STOP)
    return TeacherRequest("completions", settings.model, params, prompt=prompt)


def sampling_params(sampling: Sampling, extra_stop: tuple[str, ...] = ()) -> tuple[tuple[str, Any], ...]:
    """``sampling.params(extra_stop)``, memoised on the field values (``Sampling.params`` deep-copies them all)."""
    values = _sampling_values(sampling)
    try:
        memo_key = (values, extra_stop)
        params = _PARAMS_MEMO.get(memo_key)
    except TypeError:  # a list (the stop sequences) among the values
        memo_key = (tuple(tuple(v) if isinstance(v, list) else v for v in values), extra_stop)
        params = _PARAMS_MEMO.get(memo_key)
    if params is None:
        if len(_PARAMS_MEMO) > 256:
            _PARAMS_MEMO.clear()
        params = _PARAMS_MEMO[memo_key] = sampling.params(extra_stop)
    return params


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


@dataclass(slots=True)
class StoredAnswers:
    """What a cache holds for a conversation: the answers to its first turns, in order, how many turns it has,
    and the key of its first unanswered turn (None once every turn is answered)."""

    answers: list[TeacherResponse]
    turns: int
    next_key: str | None = None


def stored_answer_rounds(
    conversations: Sequence[Conversation], settings: RunSettings
) -> Generator[list[str], Mapping[str, object], list[StoredAnswers]]:
    """Look up the stored answers of many conversations at once, turn by turn.

    Turn k's request depends on the answers before it, so the look-ups go in rounds: the generator yields the
    keys of the next turn of every conversation answered so far, is sent what the cache found for them (only
    :class:`TeacherResponse` values count as answers), and returns one :class:`StoredAnswers` per conversation.
    The caller does the look-ups, synchronously (export) or not (the engine).
    """
    stored = [StoredAnswers([], turn_count(c, settings)) for c in conversations]
    waiting = [i for i, s in enumerate(stored) if s.turns > 0]
    turn = 0
    while waiting:
        keys: dict[str, list[int]] = {}
        for i in waiting:
            key = request_for(conversations[i], settings, turn, [a.text for a in stored[i].answers]).key
            stored[i].next_key = key
            keys.setdefault(key, []).append(i)
        found = yield list(keys)
        waiting = []
        for key, indexes in keys.items():
            entry = found.get(key)
            if not isinstance(entry, TeacherResponse):
                continue
            for i in indexes:
                stored[i].answers.append(entry)
                stored[i].next_key = None
                if len(stored[i].answers) < stored[i].turns:
                    waiting.append(i)
        waiting.sort()
        turn += 1
    return stored
