"""BookSum chapter-level rows: one summarisation request per chapter, the human summary kept as the reference.

A row needs ``chapter`` (the chapter text); ``summary_text`` (the human summary) becomes the assistant turn and
``meta["reference"]``. The published alignment rows, which carry file paths instead of text, are recognised and
rejected with that reason. The user turn is ``--reader-opt prompt=TEXT`` with ``{chapter}`` where the chapter goes
(default :data:`DEFAULT_PROMPT`); ``--system-prompt`` adds a system prompt.

Long chapters: every prompt is counted with :func:`distill.tokens.count` (system prompt included). With
``--reader-opt context_window=N`` (the teacher's context window, in tokens) and ``reserve=M`` (tokens kept for the
answer, e.g. ``--max-tokens``; default 0) a prompt over ``N - M`` tokens is skipped (a reject saying so) or, with
``overflow=truncate``, its chapter is cut to fit (``meta["truncated_from_tokens"]`` records the original count).
``reader.stats`` counts rows read, prompts over the window, skipped and truncated, for the run's summary.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from distill import tokens
from distill.conversation import Conversation, Message
from distill.errors import UsageError

from .base import READERS
from .normalise import BadRecord, clean_text, content_id
from .records import RecordReader, fill

DEFAULT_PROMPT = "Summarize the following chapter of a book.\n\n{chapter}"
OVERFLOW_POLICIES = ("skip", "truncate")


@READERS.register("booksum")
class BookSumReader(RecordReader):
    """Reads BookSum chapter-level rows (JSONL, JSON list, or through ``hf``)."""

    name = "booksum"

    @classmethod
    def claims(cls, record: Mapping[str, Any]) -> bool:
        return ("chapter" in record and ("summary_text" in record or "summary" in record)) or (
            "chapter_path" in record and "summary_id" in record
        )

    def check_options(self) -> None:
        extra = self.options.extra
        self.prompt = str(extra.get("prompt") or DEFAULT_PROMPT)
        self.window = _int_option(extra, "context_window")
        reserve = _int_option(extra, "reserve", minimum=0) or 0
        self.budget = None if self.window is None else self.window - reserve
        if self.budget is not None and self.budget <= 0:
            raise UsageError("--reader-opt reserve must be smaller than context_window")
        self.overflow = str(extra.get("overflow", "skip"))
        if self.overflow not in OVERFLOW_POLICIES:
            raise UsageError(f"--reader-opt overflow={self.overflow} is not valid; use skip or truncate")
        self.stats = {"rows": 0, "over_context_window": 0, "skipped": 0, "truncated": 0}

    def convert(self, source: str, record: dict[str, Any]) -> Conversation:
        self.stats["rows"] += 1
        chapter = record.get("chapter")
        if not isinstance(chapter, str) or not chapter.strip():
            if "chapter_path" in record:
                raise BadRecord(
                    "no 'chapter' text: an alignment row (paths only); use rows with the chapter text"
                )
            raise BadRecord("no 'chapter' text (key 'chapter' missing, empty or not a string)")
        chapter = clean_text(chapter)
        system = self.options.system_prompt or None
        meta: dict[str, Any] = {k: record[k] for k in ("book_id", "summary_id", "bid") if k in record}
        prompt = fill(self.prompt, chapter=chapter)
        count = _prompt_tokens(system, prompt)
        meta["prompt_tokens"] = count
        if self.budget is not None and count > self.budget:
            self.stats["over_context_window"] += 1
            if self.overflow == "skip":
                self.stats["skipped"] += 1
                raise BadRecord(
                    f"skipped: the prompt has {count} tokens, over the context window ({self.budget} tokens for the "
                    "prompt); --reader-opt overflow=truncate cuts it instead"
                )
            prompt, chapter_cut = self._truncated(system, chapter, count)
            self.stats["truncated"] += 1
            meta["truncated_from_tokens"] = count
            meta["prompt_tokens"] = _prompt_tokens(system, prompt)
            chapter = chapter_cut
        messages = ([Message("system", system)] if system else []) + [Message("user", prompt)]
        summary = record.get("summary_text", record.get("summary"))
        if isinstance(summary, str) and summary.strip():
            summary = clean_text(summary)
            messages.append(Message("assistant", summary))
            meta["reference"] = summary
        return Conversation(id=_row_id(record, chapter), messages=messages, source=source, meta=meta)

    def _truncated(self, system: str | None, chapter: str, count: int) -> tuple[str, str]:
        budget = self.budget or 0
        ids = tokens.encoding().encode_ordinary(chapter)
        keep = len(ids) - (count - budget)
        while keep > 0:
            cut = tokens.encoding().decode(ids[:keep])
            prompt = fill(self.prompt, chapter=cut)
            over = _prompt_tokens(system, prompt) - budget
            if over <= 0:
                return prompt, cut
            keep -= over  # a token boundary can merge differently after the cut
        raise BadRecord(
            f"the prompt without the chapter is already over the context window ({budget} tokens)"
        )


def _prompt_tokens(system: str | None, prompt: str) -> int:
    messages = ([{"content": system}] if system else []) + [{"content": prompt}]
    return tokens.count_messages(messages)


def _int_option(extra: Mapping[str, Any], key: str, minimum: int = 1) -> int | None:
    value = extra.get(key)
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"--reader-opt {key}={value} must be a whole number of tokens") from None
    if number < minimum:
        raise UsageError(f"--reader-opt {key}={value} must be at least {minimum}")
    return number


def _row_id(record: Mapping[str, Any], chapter: str) -> str:
    for key in ("id", "summary_path"):
        value = record.get(key)
        if isinstance(value, str) and value:
            return value
    parts = [record.get(k) for k in ("source", "book_id", "summary_id")]
    if all(isinstance(p, str) and p for p in parts):
        return "/".join(parts)  # type: ignore[arg-type]
    return content_id({"chapter": chapter, "summary": record.get("summary_text")})
