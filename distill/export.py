"""Render a run's answers from the cache into a fine-tuning file, in input order, byte for byte reproducibly.

The cache holds each run's settings and input conversations; the requests are rebuilt from them exactly as the
run built them, and their answers looked up by key. A conversation with a turn not (yet) answered is left out
and counted. The file is written beside its final name and renamed into place, so a reader never sees half of it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import orjson

from formats.writers.base import RenderError, encode_line

from . import plan
from .cache import LOOKUP_CHUNK, connect_readonly, reported
from .conversation import Conversation
from .engine import decode_conversation
from .errors import UsageError
from .requests import TeacherResponse
from .settings import RunSettings, Sampling

# Conversations rendered per round of look-ups (and per write to the file).
EXPORT_CHUNK = 512


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


def settings_from_stored(stored: dict) -> RunSettings:
    return RunSettings(
        model=stored["model"],
        base_url="",
        api=stored["api"],
        history=stored["history"],
        sampling=Sampling(**stored["sampling"]),
        system_prompt=stored["system_prompt"],
    )


def latest_run(conn: sqlite3.Connection) -> str:
    row = conn.execute("SELECT id FROM runs ORDER BY updated DESC, created DESC LIMIT 1").fetchone()
    if row is None:
        raise UsageError("the cache holds no run yet; run 'distill run' first")
    return row[0]


def stored_settings(conn: sqlite3.Connection, run_id: str) -> RunSettings:
    row = conn.execute("SELECT settings FROM runs WHERE id = ?", (run_id,)).fetchone()
    if row is None:
        known = ", ".join(r[0] for r in conn.execute("SELECT id FROM runs")) or "none"
        raise UsageError(f"no run {run_id!r} in the cache (--run); runs: {known}")
    return settings_from_stored(orjson.loads(row[0]))


def stored_conversations(conn: sqlite3.Connection, run_id: str) -> Iterator[Conversation]:
    rows = conn.execute(
        "SELECT id, source, data FROM conversations WHERE run_id = ? ORDER BY position", (run_id,)
    )
    for conv_id, source, data in rows:
        yield decode_conversation(conv_id, source, data)


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
    output_format: str = "messages",
    run_id: str | None = None,
    val_fraction: float = 0.0,
) -> ExportResult:
    """Write the answered conversations of ``run_id`` (default: the latest run) to ``output``.

    With ``val_fraction`` the conversations whose id hashes below it go to ``OUTPUT_STEM.val.jsonl`` instead
    (:mod:`formats.split`): the same conversations in every export, whatever the order or the other records.
    """
    from formats.split import check_fraction
    from formats.writers import open_writer

    check_fraction(val_fraction)
    writer = open_writer(output_format)
    conn = connect_readonly(Path(cache_path))
    try:
        with reported(Path(cache_path)):  # a damaged page is a CacheError, not a traceback
            result = _export(conn, writer, Path(output), run_id, val_fraction)
    finally:
        conn.close()
    return result


def _export(
    conn: sqlite3.Connection, writer, output: Path, run_id: str | None, val_fraction: float
) -> ExportResult:
    from formats.split import split_of, validation_path

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
                line = _render(conversation, answers, failed, settings, writer, result)
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
    writer,
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
        line = encode_line(writer.render(done))
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
