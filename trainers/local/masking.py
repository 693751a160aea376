"""Token labels for causal-LM fine-tuning, with the loss mask read off the model's own chat template.

Nothing here searches for marker strings. Where each part of a conversation lands in the rendered text is found
by asking the template itself:

* an assistant *reply* is what the model has to write after the generation prompt: it starts where
  ``render(messages[:i], add_generation_prompt=True)`` ends and stops where ``render(messages[:i + 1])`` ends,
  so it holds the reply's content and the template's end-of-turn text (the model must learn to stop);
* a message's *content* is found by rendering the whole conversation twice with that content replaced by two
  different one-character probes: the text both renderings share before and after the probe is the template's,
  and the rest is the content, wherever the template puts it (Gemma-3 folds the system prompt into the first
  user turn, for instance).

A template that rejects the system role (Gemma-2's raises) gets the system prompt folded into the first user
turn the same way (the system text, a blank line, the user text) rather than losing it.

Then the rendered text is tokenized once, as ``apply_chat_template`` would for inference, and each token takes
the label of the character it starts with. Modes (``--train-on-inputs``), as Together defines them:

* ``false``: only assistant replies count;
* ``true``: every token counts;
* ``auto``: ``false`` for messages data, the completion only for prompt/completion data, ``true`` for text;
* ``boilerplate``: everything but the template's own text (role markers, special tokens, separators) counts,
  i.e. the content of every message plus each assistant reply's end-of-turn.

A message with ``"weight": 0`` never counts. Prompt/completion and text data use no template: the text is
tokenized with the tokenizer's own special tokens, and an end-of-sequence token is appended and trained.
"""

from __future__ import annotations

import os.path
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from jinja2 import TemplateError

from distill.conversation import Message
from distill.errors import CheckError, TrainerError, UsageError

from .data import DataFormat, TrainingRecord

IGNORE_INDEX = -100
"""The label PyTorch's cross-entropy (and so every Hugging Face causal LM) skips."""

MaskMode = Literal["true", "false", "boilerplate"]
Span = tuple[int, int]

_AUTO_MODE: dict[DataFormat, MaskMode] = {"messages": "false", "prompt_completion": "false", "text": "true"}
_PROBES = ("A", "B")


class ChatTokenizer(Protocol):
    """The part of a Hugging Face fast tokenizer this module uses."""

    chat_template: Any
    eos_token_id: int | None

    def apply_chat_template(self, conversation: list[dict[str, str]], **kwargs: Any) -> Any: ...

    def __call__(self, text: str, **kwargs: Any) -> Any: ...


@dataclass(frozen=True, slots=True)
class LabelledExample:
    """Token ids and their labels (``IGNORE_INDEX`` where the loss is masked), as long as each other."""

    source: str
    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)

    def truncated(self, max_length: int) -> LabelledExample:
        return LabelledExample(self.source, self.input_ids[:max_length], self.labels[:max_length])


def resolve_mode(train_on_inputs: str, data_format: DataFormat) -> MaskMode:
    """The masking mode ``--train-on-inputs`` means for a file of ``data_format``."""
    if train_on_inputs == "auto":
        return _AUTO_MODE[data_format]
    if train_on_inputs in ("true", "false", "boilerplate"):
        return train_on_inputs  # type: ignore[return-value]
    raise UsageError(f"--train-on-inputs {train_on_inputs!r}: choose true, false, auto or boilerplate")


def label_record(tokenizer: ChatTokenizer, record: TrainingRecord, mode: MaskMode) -> LabelledExample:
    """Tokenize one record and label it under ``mode``."""
    if record.messages:
        return _label_conversation(tokenizer, record, mode)
    text = record.prompt + record.completion if record.prompt or record.completion else record.text
    trained_from = len(record.prompt) if mode == "false" else 0
    return _label_plain_text(tokenizer, record.source, text, trained_from, mode)


def _label_plain_text(
    tokenizer: ChatTokenizer, source: str, text: str, trained_from: int, mode: MaskMode
) -> LabelledExample:
    encoding = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    ids, offsets = list(encoding["input_ids"]), list(encoding["offset_mapping"])
    trained = bytearray(len(text))
    trained[trained_from:] = b"\x01" * (len(text) - trained_from)
    labels = _labels(ids, offsets, trained, label_added_tokens=mode == "true")
    eos = tokenizer.eos_token_id
    if eos is not None:  # the model learns where a completion ends, whoever wrote the end token
        if not ids or ids[-1] != eos:
            ids.append(eos)
            labels.append(eos)
        labels[-1] = eos
    return LabelledExample(source, ids, labels)


def _label_conversation(tokenizer: ChatTokenizer, record: TrainingRecord, mode: MaskMode) -> LabelledExample:
    layout = ChatLayout(tokenizer, record.messages, record.source)
    trained = layout.trained_chars(mode)
    encoding = tokenizer(layout.rendered, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(encoding["input_ids"]), list(encoding["offset_mapping"])
    return LabelledExample(record.source, ids, _labels(ids, offsets, trained, label_added_tokens=False))


def _labels(
    ids: Sequence[int], offsets: Sequence[Sequence[int]], trained: bytearray, *, label_added_tokens: bool
) -> list[int]:
    """Each token takes the label of the character it starts at; zero-width tokens are the tokenizer's own."""
    labels = []
    for token_id, (start, end) in zip(ids, offsets, strict=True):
        keep = trained[start] if end > start else label_added_tokens
        labels.append(token_id if keep else IGNORE_INDEX)
    return labels


class ChatLayout:
    """Where each message of one conversation lands in its chat-template rendering (character spans)."""

    def __init__(self, tokenizer: ChatTokenizer, messages: Sequence[Message], source: str) -> None:
        if tokenizer.chat_template is None:
            raise TrainerError(
                "the tokenizer of --model has no chat template, which messages data needs; use an instruct "
                "model, or write the file as prompt/completion or text data"
            )
        self.tokenizer = tokenizer
        self.messages = [{"role": m.role, "content": m.content} for m in messages]
        self.weights = [m.weight for m in messages]
        self.source = source
        try:
            self.rendered = self.render(self.messages)
        except CheckError:
            if not self._fold_system_prompt():
                raise
            try:
                self.rendered = self.render(self.messages)
            except CheckError:
                raise CheckError(
                    f"{source}: the chat template of --model rejects this conversation, with or without its "
                    "system prompt folded into the first user turn; check the roles against the model's template"
                ) from None

    def _fold_system_prompt(self) -> bool:
        """Put a leading system prompt at the head of the first user turn, as Gemma-3's template does itself.

        For templates with no system role (Gemma-2 raises on one). The merged turn keeps the user's weight.
        """
        if len(self.messages) < 2 or [m["role"] for m in self.messages[:2]] != ["system", "user"]:
            return False
        system, user = self.messages[0]["content"], self.messages[1]["content"]
        self.messages[1:2] = [{"role": "user", "content": f"{system}\n\n{user}"}]
        del self.messages[0], self.weights[0]
        return True

    def render(self, messages: list[dict[str, str]], *, generation_prompt: bool = False) -> str:
        """The template's text for ``messages``; a template's own ``raise_exception`` becomes a CheckError."""
        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt
            )
        except TemplateError as e:
            raise CheckError(
                f"{self.source}: the chat template of --model rejects this conversation: {e}"
            ) from None

    def trained_chars(self, mode: MaskMode) -> bytearray:
        """One byte per character of :attr:`rendered`: 1 where the loss counts under ``mode``."""
        trained = bytearray(len(self.rendered))
        if mode == "true":
            trained[:] = b"\x01" * len(trained)
        for i, message in enumerate(self.messages):
            counts = self.weights[i] != 0
            is_reply = message["role"] == "assistant"
            if mode == "true" and counts:
                continue
            if mode == "false" and not is_reply:
                continue
            span = self.reply_span(i) if is_reply else self.content_span(i)
            if span is not None:
                start, end = span
                trained[start:end] = (b"\x01" if counts else b"\x00") * (end - start)
        return trained

    def reply_span(self, i: int) -> Span:
        """What the model writes for assistant message ``i``: after the generation prompt, up to turn end."""
        prompt = self.render(self.messages[:i], generation_prompt=True)
        turn = self.render(self.messages[: i + 1])
        if not (
            self.rendered.startswith(prompt) and self.rendered.startswith(turn) and len(prompt) <= len(turn)
        ):
            raise TrainerError(
                f"{self.source}: the chat template renders message {i} differently once later turns follow, so "
                "its reply cannot be located from the template; use --train-on-inputs true with this model"
            )
        return len(prompt), len(turn)

    def content_span(self, i: int) -> Span | None:
        """Where message ``i``'s content lies in :attr:`rendered`, or None when the template drops it."""
        first, second = (self._render_with_content(i, probe) for probe in _PROBES)
        if first == second:
            return None
        start = len(os.path.commonprefix([first, second]))
        tail = len(os.path.commonprefix([first[::-1], second[::-1]]))
        end = len(self.rendered) - tail
        rendered_once = len(first) - start - tail == len(_PROBES[0])
        around_unchanged = (
            self.rendered[:start] == first[:start] and self.rendered[end:] == first[start + 1 :]
        )
        if not (rendered_once and around_unchanged and start <= end):
            raise TrainerError(
                f"{self.source}: the chat template repeats or rewrites message {i}'s content, so it cannot be "
                "told apart from the template's own text; use --train-on-inputs true or false with this model"
            )
        return start, end

    def _render_with_content(self, i: int, content: str) -> str:
        messages = [dict(m) for m in self.messages]
        messages[i]["content"] = content
        return self.render(messages)
