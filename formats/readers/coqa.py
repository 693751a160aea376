"""CoQA: one conversation per story, the questions as user turns, the gold answers kept for evaluation.

Accepted layouts: the official file ``{"version": ..., "data": [story, ...]}`` (streamed), a bare list of stories,
JSONL, and Hugging Face rows (``questions`` a list of strings, ``answers`` ``{"input_text": [...], ...}``).

Each story becomes: a system prompt carrying the story (``--reader-opt prompt=TEXT`` with ``{story}`` where the
story goes, else ``--system-prompt``, which must hold ``{story}`` too, else the Together cookbook's ``"Read the
story and extract answers for the questions.\\nStory: {story}"``), then for each question in turn order a user
turn (the question) and an assistant turn (the gold answer, the dataset's own answer). ``meta["gold"]`` lists the
gold answers aligned with the user turns; ``meta["gold_alternatives"]`` the other annotators' answers per
question, where the file has them. A story without text, without questions, or whose answers do not match its questions one to one is rejected.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from distill.conversation import Conversation, Message
from distill.errors import UsageError

from .base import READERS
from .normalise import BadRecord, clean_text, content_id
from .records import RecordReader, fill, text_field

DEFAULT_PROMPT = "Read the story and extract answers for the questions.\nStory: {story}"


@READERS.register("coqa")
class CoQAReader(RecordReader):
    """Reads CoQA stories (official JSON, bare list, JSONL or HF rows)."""

    name = "coqa"
    unwrap = "data"

    @classmethod
    def claims(cls, record: Mapping[str, Any]) -> bool:
        return "story" in record and "questions" in record

    def check_options(self) -> None:
        template = self.options.extra.get("prompt") or self.options.system_prompt or DEFAULT_PROMPT
        if "{story}" not in str(template):
            where = "--reader-opt prompt" if self.options.extra.get("prompt") else "--system-prompt"
            raise UsageError(f"{where} for coqa must contain {{story}} where the story goes")
        self.template = str(template)

    def convert(self, source: str, record: dict[str, Any]) -> Conversation:
        story = clean_text(text_field(record, "story"))
        questions = _question_texts(record.get("questions"))
        answers = _answer_texts(record.get("answers"), len(questions))
        messages = [Message("system", fill(self.template, story=story))]
        for question, answer in zip(questions, answers, strict=True):
            messages += [Message("user", question), Message("assistant", answer)]
        meta: dict[str, Any] = {"gold": answers}
        alternatives = _alternatives(record.get("additional_answers"), len(questions))
        if alternatives:
            meta["gold_alternatives"] = alternatives
        conv_id = record.get("id")
        if not isinstance(conv_id, str) or not conv_id:
            conv_id = content_id({"story": story, "questions": questions})
        return Conversation(id=conv_id, messages=messages, source=source, meta=meta)


def _question_texts(questions: Any) -> list[str]:
    if not isinstance(questions, list) or not questions:
        raise BadRecord("no questions (key 'questions' missing, empty or not a list)")
    texts = [_text_of(q, "question") for q in _by_turn(questions)]
    return texts


def _answer_texts(answers: Any, count: int) -> list[str]:
    if isinstance(answers, dict):  # Hugging Face layout: columns of lists
        answers = answers.get("input_text")
    if not isinstance(answers, list):
        raise BadRecord("no answers (key 'answers' missing or not a list)")
    texts = [_text_of(a, "answer") for a in _by_turn(answers)]
    if len(texts) != count:
        raise BadRecord(f"{count} questions but {len(texts)} answers")
    return texts


def _alternatives(additional: Any, count: int) -> list[list[str]]:
    if not isinstance(additional, dict):
        return []
    per_question: list[list[str]] = [[] for _ in range(count)]
    for annotator in additional.values():
        if not isinstance(annotator, list) or len(annotator) != count:
            continue
        for i, answer in enumerate(_by_turn(annotator)):
            text = answer.get("input_text") if isinstance(answer, dict) else answer
            if isinstance(text, str):
                per_question[i].append(clean_text(text))
    return per_question if any(per_question) else []


def _by_turn(items: list[Any]) -> list[Any]:
    if all(isinstance(i, dict) and isinstance(i.get("turn_id"), int) for i in items):
        return sorted(items, key=lambda i: i["turn_id"])
    return items


def _text_of(item: Any, what: str) -> str:
    text = item.get("input_text") if isinstance(item, dict) else item
    if not isinstance(text, str) or not clean_text(text).strip():
        raise BadRecord(f"an empty or missing {what} text")
    return clean_text(text)
