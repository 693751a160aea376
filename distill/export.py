"""Render a run's answers from the cache into a fine-tuning file, in input order, byte for byte reproducibly.

The cache holds each run's settings and input conversations; the requests are rebuilt from them exactly as the
run built them, and their answers looked up by key. Each finished conversation becomes one line through the
``render`` it is given (a writer's :meth:`~formats.writers.base.Writer.line`: the caller picks the format). A conversation with a turn not (yet) answered is left out
and counted. The file is written beside its final name and renamed into place, so a reader never sees half of it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from . import plan
from .cache import LOOKUP_CHUNK, connect_readonly, reported
from .conversation import Conversation
from .errors import RenderError
from .requests import TeacherResponse
from .settings import RunSettings
from .split import check_fraction, split_of, validation_path
from .stored import latest_run, stored_conversations, stored_settings

# Conversations rendered per round of look-ups (and per write to the file).
EXPORT_CHUNK = 512
Render = Callable[[Conversation], bytes]
"""One output line (newline included) for a finished conversation; a RenderError if the format cannot hold it."""


@dataclass(slots=True)
class ExportResult:
    path: Path
    run_id: str
    written: int = 0
    incomplete: int = 0
    failed: int = 0
    turns: int = 0
    finished_length: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failed_ids: list[str] = field(default_factory=list)
    validation_path: Path | None = None
    validation_written: int = 0


def answered(
    conn: sqlite3.Connection, conversations: list[Conversation], settings: RunSettings
) -> list[tuple[list[TeacherResponse], bool]]:
    """For each conversation, its stored answers in turn order and whether its first unanswered turn failed for
    good; looked up turn by turn for all of them at once: one ``SELECT`` per turn for the whole list
    (:func:`plan.stored_answer_rounds`) instead of one per turn and conversation."""
    rounds = plan.stored_answer_rounds(conversations, settings)
    try:
        keys = next(rounds)
        while True:
            keys = rounds.send(_stored_answers(conn, keys))
    except StopIteration as done:
        stored: list[plan.StoredAnswers] = done.value
    unanswered = [s.next_key for s in stored if s.next_key is not None]
    failed = _failed_keys(conn, unanswered) if unanswered else set()
    return [(s.answers, s.next_key in failed) for s in stored]


def _stored_answers(conn: sqlite3.Connection, keys: list[str]) -> dict[str, TeacherResponse]:
    found: dict[str, TeacherResponse] = {}
    for start in range(0, len(keys), LOOKUP_CHUNK):
        chunk = keys[start : start + LOOKUP_CHUNK]
        rows = conn.execute(
            "SELECT key, text, finish_reason, prompt_tokens, completion_tokens FROM responses "
            f"WHERE key IN ({','.join('?' * len(chunk))})",
            chunk,
        )
        for key, *answer in rows:
            found[key] = TeacherResponse(*answer)
    return found


def _failed_keys(conn: sqlite3.Connection, keys: list[str]) -> set[str]:
    failed: set[str] = set()
    for start in range(0, len(keys), LOOKUP_CHUNK):
        chunk = keys[start : start + LOOKUP_CHUNK]
        marks = ",".join("?" * len(chunk))
        failed.update(
            key for (key,) in conn.execute(f"SELECT key FROM failures WHERE key IN ({marks})", chunk)
        )
    return failed


def export(
    cache_path: Path,
    output: Path,
    render: Render,
    run_id: str | None = None,
    val_fraction: float = 0.0,
) -> ExportResult:
    """Write the answered conversations of ``run_id`` (default: the latest run) to ``output``, each rendered
    by ``render``.

    With ``val_fraction`` the conversations whose id hashes below it go to ``OUTPUT_STEM.val.jsonl`` instead
    (:mod:`distill.split`): the same conversations in every export, whatever the order or the other records.
    """
    check_fraction(val_fraction)
    conn = connect_readonly(Path(cache_path))
    try:
        with reported(Path(cache_path)):  # a damaged page is a CacheError, not a traceback
            result = _export(conn, render, Path(output), run_id, val_fraction)
    finally:
        conn.close()
    return result


def _export(
    conn: sqlite3.Connection, render: Render, output: Path, run_id: str | None, val_fraction: float
) -> ExportResult:
    run_id = run_id or latest_run(conn)
    settings = stored_settings(conn, run_id)
    result = ExportResult(output, run_id)
    if val_fraction:
        result.validation_path = validation_path(output)
    tmp, val_tmp = Path(f"{output}.tmp"), Path(f"{result.validation_path}.tmp")
    with open(tmp, "wb") as out, open(val_tmp, "wb") if val_fraction else contextlib.nullcontext() as val_out:
        for chunk in batched(stored_conversations(conn, run_id), EXPORT_CHUNK):
            train, validation = [], []
            for conversation, (answers, failed) in zip(chunk, answered(conn, chunk, settings), strict=True):
                line = _render(conversation, answers, failed, settings, render, result)
                if line is None:
                    continue
                if val_fraction and split_of(conversation.id, val_fraction) == "validation":
                    validation.append(line)
                else:
                    train.append(line)
            out.write(b"".join(train))
            if validation:
                val_out.write(b"".join(validation))
                result.validation_written += len(validation)
    os.replace(tmp, output)
    if val_fraction:
        os.replace(val_tmp, result.validation_path)
    return result


def batched(items: Iterable[Conversation], size: int) -> Iterator[list[Conversation]]:
    """``items`` in lists of ``size`` (the last one shorter)."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _render(
    conversation: Conversation,
    answers: list[TeacherResponse],
    failed: bool,
    settings: RunSettings,
    render: Render,
    result: ExportResult,
) -> bytes | None:
    if len(answers) < plan.turn_count(conversation, settings) or not answers:
        if failed:
            result.failed += 1
            result.failed_ids.append(conversation.id)
        else:
            result.incomplete += 1
        return None
    done = plan.distilled(conversation, settings, [a.text for a in answers])
    try:
        line = render(done)
    except RenderError as e:
        result.failed += 1
        result.failed_ids.append(f"{conversation.id}: {e}")
        return None
    result.written += 1
    result.turns += len(answers)
    for answer in answers:
        result.finished_length += answer.finish_reason == "length"
        result.prompt_tokens += answer.prompt_tokens or 0
        result.completion_tokens += answer.completion_tokens or 0
    return line
