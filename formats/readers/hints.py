"""Hint generation (the HintEval recipe): WikiHint and TriviaHG questions turned into hint requests.

Two schemas are read: WikiHint/HintEval (``{"id", "question": {"question"}, "answer": {"answer"}, "hints":
[{"hint"}]}``; plain strings are accepted for each) and TriviaHG (``{"Q_ID", "Question", "ExactAnswer", "Hints":
[...]}``). Each question becomes, as the HintEval fine-tuning recipe wrote it:

* system: :data:`SYSTEM_PROMPT` (``--system-prompt`` replaces it);
* user: ``Generate {n} hints for the following question without using "{answer}" word in the hints. Question:
  {question}`` (``--reader-opt prompt=TEXT`` replaces it; ``{n}``, ``{answer}``, ``{question}`` are filled);
* assistant (when the record has hints): the hints numbered ``1. ...`` one per line, as the recipe did.

``n`` is ``--reader-opt num_hints=N`` or else the number of hints the record has (a record with neither is
rejected). ``meta`` keeps the ``answer`` and the reference ``hints`` for evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from distill.conversation import Conversation, Message
from distill.errors import UsageError

from .base import READERS
from .normalise import BadRecord, clean_text, content_id
from .records import RecordReader, fill

SYSTEM_PROMPT = (
    "You are a helpful assistant that generates hints for user questions. You are given the question, and your "
    "goal is to generate hints for the question."
)
DEFAULT_PROMPT = 'Generate {n} hints for the following question without using "{answer}" word in the hints. Question: {question}'


@READERS.register("hints")
class HintsReader(RecordReader):
    """Reads WikiHint / HintEval and TriviaHG question records."""

    name = "hints"

    @classmethod
    def claims(cls, record: Mapping[str, Any]) -> bool:
        return ("question" in record and ("hints" in record or "answer" in record)) or (
            "Question" in record and ("Hints" in record or "ExactAnswer" in record)
        )

    def check_options(self) -> None:
        extra = self.options.extra
        self.prompt = str(extra.get("prompt") or DEFAULT_PROMPT)
        self.num_hints: int | None = None
        if extra.get("num_hints") is not None:
            try:
                self.num_hints = int(extra["num_hints"])
            except (TypeError, ValueError):
                self.num_hints = 0
            if self.num_hints < 1:
                raise UsageError(
                    f"--reader-opt num_hints={extra['num_hints']} must be a positive whole number"
                )

    def convert(self, source: str, record: dict[str, Any]) -> Conversation:
        question = _text(record.get("question", record.get("Question")), "question", "question")
        answer = _text(
            record.get("answer", record.get("ExactAnswer", record.get("answers"))), "answer", "answer"
        )
        hints = _hints(record.get("hints", record.get("Hints")))
        n = self.num_hints or len(hints)
        if not n:
            raise BadRecord("no hints to count: pass --reader-opt num_hints=N for questions without hints")
        system = self.options.system_prompt if self.options.system_prompt is not None else SYSTEM_PROMPT
        messages = [Message("system", system)] if system else []
        messages.append(Message("user", fill(self.prompt, n=str(n), answer=answer, question=question)))
        if hints:
            messages.append(Message("assistant", "".join(f"{i}. {h}\n" for i, h in enumerate(hints[:n], 1))))
        record_id = record.get("id", record.get("Q_ID"))
        if not isinstance(record_id, str) or not record_id:
            record_id = content_id({"question": question, "answer": answer})
        return Conversation(
            id=record_id, messages=messages, source=source, meta={"answer": answer, "hints": hints}
        )


def _text(value: Any, key: str, what: str) -> str:
    if isinstance(value, dict):
        value = value.get(key)
    if isinstance(value, list) and value:  # HintEval "answers": [{"answer": ...}, ...]
        return _text(value[0], key, what)
    if not isinstance(value, str) or not clean_text(value).strip():
        raise BadRecord(f"no {what} text")
    return clean_text(value).strip()


def _hints(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRecord("'hints' must be a list")
    hints = []
    for item in value:
        text = item.get("hint") if isinstance(item, dict) else item
        if isinstance(text, str) and clean_text(text).strip():
            hints.append(clean_text(text).strip())
    return hints
