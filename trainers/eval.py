"""Evaluation of a student against its base model: the CoQA and BookSum tasks, scoring, reports, comparison.

A task turns its input file into *dialogues*: a system prompt (optional) and turns, each a user prompt with its
gold answer. Each turn is one scored item. CoQA: one dialogue per story, system prompt ``Read the story and extract
answers for the questions.\\nStory: ...`` (the Together cookbook's), one turn per question in order, the first
gold answer as the reference; the history of turn *k* is the gold answers (``history="gold"``, the CoQA protocol)
or the model's own earlier answers (``history="model"``). BookSum: one dialogue per chapter, one turn, the prompt
of the LLaMA-2-7B-32K-Chat recipe (``Chapter: ...\\n\\nQ: Can you write an appropriate summary of the above
paragraphs?\\nA:``), the human summary as the reference.

The answers come through the engine (:func:`evaluate`: cached, rate-limited, retried, so an evaluation resumes and
re-scores without paying again) or from any ``ask`` function (:func:`predict`). :func:`score` makes the report::

    {"task", "model", "n", "em", "f1" | "rouge1", "rouge2", "rougeL", "items": [{"id", "question", "prediction", "gold"}]}
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from distill.errors import InputError, UsageError

from . import metrics

# the tasks' metrics and the reports live in eval_report.py; callers find them here too
from .eval_report import (  # noqa: F401
    METRICS,
    REFERENCES,
    TASKS,
    Reference,
    compare,
    load_report,
    summary_line,
    write_report,
)

Task = Literal["coqa", "booksum"]
History = Literal["gold", "model"]

COQA_SYSTEM_PROMPT = "Read the story and extract answers for the questions.\nStory: {story}"
BOOKSUM_PROMPT = "Chapter: {chapter}\n\nQ: Can you write an appropriate summary of the above paragraphs?\nA:"
DEFAULT_MAX_TOKENS: dict[str, int] = {"coqa": 64, "booksum": 1024}


@dataclass(frozen=True, slots=True)
class Turn:
    """One scored item: the user prompt and its gold answer."""

    question: str
    gold: str


@dataclass(frozen=True, slots=True)
class Dialogue:
    """A story (CoQA) or chapter (BookSum): an optional system prompt and the turns asked in order."""

    id: str
    system: str | None
    turns: tuple[Turn, ...]

    numbered: bool = True

    def item_id(self, k: int) -> str:
        """The report id of turn ``k`` (0-based): ``story:1`` for CoQA turns, the chapter id for BookSum."""
        return f"{self.id}:{k + 1}" if self.numbered else self.id

    def messages(self, k: int, earlier: Sequence[str]) -> list[dict[str, str]]:
        """Request ``k``: system prompt, turns before ``k`` with ``earlier`` as their answers, then question k."""
        messages = [{"role": "system", "content": self.system}] if self.system else []
        for turn, answer in zip(self.turns[:k], earlier, strict=True):
            messages += [{"role": "user", "content": turn.question}, {"role": "assistant", "content": answer}]
        messages.append({"role": "user", "content": self.turns[k].question})
        return messages


# -- reading a task's input --------------------------------------------------------------------------------------


def load_dialogues(task: str, path: Path, limit: int | None = None) -> list[Dialogue]:
    """The dialogues of ``task`` in ``path``: CoQA JSON (official or bare list), CoQA/BookSum JSONL rows, or
    messages JSONL (the system prompt and user turns as sent, assistant turns as gold)."""
    if task not in TASKS:
        raise UsageError(f"unknown --task {task!r}; choose one of: {', '.join(TASKS)}")
    dialogues = []
    for n, record in enumerate(read_records(path)):
        if limit is not None and len(dialogues) >= limit:
            break
        where = f"{path} record {n + 1}"
        if "messages" in record:
            dialogue = from_messages(record, n, where, numbered=task == "coqa")
        elif task == "coqa":
            dialogue = from_coqa(record, n, where)
        else:
            dialogue = from_booksum(record, n, where)
        dialogues.append(dialogue)
    if not dialogues:
        raise InputError(f"{path} holds no {task} items")
    return dialogues


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """JSON objects of a ``.json`` file (a list, or ``{"data": [...]}``) or of a JSONL file, one per line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot read --input {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"--input {path} is not UTF-8 text") from None
    stripped = text.lstrip()
    if stripped.startswith("[") or (stripped.startswith("{") and path.suffix == ".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"--input {path} is not valid JSON: {e}") from None
        rows = data.get("data", [data]) if isinstance(data, dict) else data
        yield from _objects(rows, path)
        return
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield from _objects([json.loads(line)], path, number)
        except json.JSONDecodeError as e:
            raise InputError(f"{path} line {number} is not valid JSON: {e.msg}") from None


def _objects(rows: Any, path: Path, line: int | None = None) -> Iterator[dict[str, Any]]:
    for row in rows if isinstance(rows, list) else [rows]:
        if not isinstance(row, dict):
            where = f"line {line}" if line else "a record"
            raise InputError(f"{path}: {where} is not a JSON object")
        yield row


def _text(value: Any) -> str:
    if isinstance(value, dict):
        value = value.get("input_text")
    if not isinstance(value, str):
        raise ValueError
    return value


def from_coqa(record: dict[str, Any], n: int, where: str) -> Dialogue:
    """A CoQA story: ``questions`` and ``answers`` as lists of ``{"input_text", "turn_id"}`` (official) or as
    a list of strings and ``{"input_text": [...]}`` (Hugging Face layout)."""
    try:
        story = record["story"]
        questions, answers = record["questions"], record["answers"]
        if isinstance(answers, dict):
            answers = answers["input_text"]
        if questions and isinstance(questions[0], dict) and "turn_id" in questions[0]:
            by_turn = {a["turn_id"]: a for a in answers}
            answers = [by_turn[q["turn_id"]] for q in questions]
        turns = tuple(Turn(_text(q), _text(a)) for q, a in zip(questions, answers, strict=True))
    except (KeyError, TypeError, ValueError):
        raise InputError(
            f"{where} is not a CoQA story (needs story, questions and answers of equal length)"
        ) from None
    if not isinstance(story, str) or not turns:
        raise InputError(f"{where} is not a CoQA story (empty story or no questions)")
    return Dialogue(str(record.get("id", n + 1)), COQA_SYSTEM_PROMPT.format(story=story), turns)


def from_booksum(record: dict[str, Any], n: int, where: str) -> Dialogue:
    """A BookSum chapter row (the kmfoda/booksum columns ``chapter`` and ``summary_text``)."""
    chapter = record.get("chapter")
    summary = record.get("summary_text", record.get("summary"))
    if not isinstance(chapter, str) or not isinstance(summary, str) or not chapter.strip():
        raise InputError(f"{where} is not a BookSum row (needs string 'chapter' and 'summary_text')")
    if "source" in record and "book_id" in record:
        item = f"{record['source']}/{record['book_id']}"
    else:
        item = str(record.get("id", record.get("summary_id", n + 1)))
    return Dialogue(item, None, (Turn(BOOKSUM_PROMPT.format(chapter=chapter), summary),), numbered=False)


def from_messages(record: dict[str, Any], n: int, where: str, *, numbered: bool = True) -> Dialogue:
    """A ``{"messages": [...]}`` line: system prompt as is, each user turn scored against the next assistant."""
    messages = record["messages"]
    try:
        roles = [m["role"] for m in messages]
        contents = [m["content"] for m in messages]
    except (KeyError, TypeError):
        raise InputError(f"{where}: every message needs role and content") from None
    system = contents[0] if roles and roles[0] == "system" else None
    rest = list(zip(roles, contents, strict=True))[1 if system is not None else 0 :]
    pairs = list(zip(rest[::2], rest[1::2], strict=False))
    if not pairs or any(u[0] != "user" or a[0] != "assistant" for u, a in pairs) or len(rest) % 2:
        raise InputError(f"{where}: messages must be an optional system then user/assistant pairs")
    turns = tuple(Turn(user, gold) for (_, user), (_, gold) in pairs)
    if not numbered and len(turns) != 1:
        raise InputError(f"{where}: a BookSum item is one user prompt and its reference summary")
    return Dialogue(str(record.get("id", n + 1)), system, turns, numbered)


# -- asking ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """A model's answer to one request, or why there is none."""

    text: str | None
    error: str | None = None


Ask = Callable[[list[list[dict[str, str]]]], Awaitable[list[Answer]]]


@dataclass(slots=True)
class Predictions:
    """The model's answer per item id, and the items that could not be answered (with the reason)."""

    answers: dict[str, str]
    failures: dict[str, str]


async def predict(dialogues: Sequence[Dialogue], ask: Ask, history: History = "gold") -> Predictions:
    """Ask every turn of every dialogue. Under ``gold`` history all requests go at once; under ``model`` turn k of
    every dialogue goes once turn k-1 is answered (a dialogue stops at its first failed turn)."""
    if history not in ("gold", "model"):
        raise UsageError(f"--history must be gold or model, got {history!r}")
    result = Predictions({}, {})
    if history == "gold":
        items = [(d, k) for d in dialogues for k in range(len(d.turns))]
        requests = [d.messages(k, [t.gold for t in d.turns[:k]]) for d, k in items]
        _collect(result, items, await ask(requests))
        return result
    alive = list(dialogues)
    for k in range(max(len(d.turns) for d in dialogues)):
        items = [(d, k) for d in alive if k < len(d.turns)]
        requests = [d.messages(k, [result.answers[d.item_id(j)] for j in range(k)]) for d, _ in items]
        _collect(result, items, await ask(requests))
        alive = [d for d, _ in items if d.item_id(k) in result.answers]
    return result


def _collect(result: Predictions, items: list[tuple[Dialogue, int]], answers: list[Answer]) -> None:
    for (dialogue, k), answer in zip(items, answers, strict=True):
        if answer.text is None:
            result.failures[dialogue.item_id(k)] = answer.error or "no answer"
        else:
            result.answers[dialogue.item_id(k)] = answer.text


async def evaluate(
    task: str,
    dialogues: Sequence[Dialogue],
    settings: Any,
    cache_path: Path,
    api_key: str | None,
    history: History = "gold",
) -> tuple[dict[str, Any], Predictions]:
    """Ask the model ``settings`` names through the engine (cache at ``cache_path``), then score; returns the
    report and the predictions (with the failures)."""
    from distill.cache import Cache
    from distill.client import TeacherClient
    from distill.engine import Engine

    if settings.api != "chat":
        raise UsageError("distill eval asks through the chat API; drop --api completions")
    async with (
        Cache(cache_path) as cache,
        TeacherClient.for_settings(settings, api_key) as client,
    ):
        engine = Engine(settings, cache, client)
        predictions = await predict(dialogues, engine_ask(engine, settings), history)
    return score(task, settings.model, dialogues, predictions.answers), predictions


def engine_ask(engine: Any, settings: Any) -> Ask:
    """An :data:`Ask` that sends chat requests through ``engine`` (one :class:`TeacherRequest` each)."""
    from distill.cache import Failure
    from distill.requests import TeacherRequest

    params = settings.sampling.params()

    async def ask(conversations: list[list[dict[str, str]]]) -> list[Answer]:
        requests = [
            TeacherRequest(
                "chat",
                settings.model,
                params,
                messages=tuple((m["role"], m["content"]) for m in conversation),
            )
            for conversation in conversations
        ]
        results = await asyncio.gather(*(engine.answer(r) for r in requests))
        return [Answer(None, r.reason) if isinstance(r, Failure) else Answer(r.text) for r in results]

    return ask


def eval_settings(task: str, settings: Any) -> Any:
    """``settings`` with the task's ``max_tokens`` when none was given (64 for CoQA, as the cookbook asked)."""
    if settings.sampling.max_tokens is not None:
        return settings
    return replace(settings, sampling=replace(settings.sampling, max_tokens=DEFAULT_MAX_TOKENS[task]))


# -- scoring and reports ----------------------------------------------------------------------------------------


def score(task: str, model: str, dialogues: Sequence[Dialogue], answers: dict[str, str]) -> dict[str, Any]:
    """The report of ``task``: mean scores over every answered item, and the items themselves."""
    items = [
        {
            "id": d.item_id(k),
            "question": turn.question,
            "prediction": answers[d.item_id(k)],
            "gold": turn.gold,
        }
        for d in dialogues
        for k, turn in enumerate(d.turns)
        if d.item_id(k) in answers
    ]
    pairs = [(item["gold"], item["prediction"]) for item in items]
    scores = metrics.squad_scores(pairs) if task == "coqa" else metrics.rouge_scores(pairs)
    return {"task": task, "model": model, "n": len(items), **scores, "items": items}
