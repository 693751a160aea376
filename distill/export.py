"""Render a run's answers from the cache into a fine-tuning file, in input order, byte for byte reproducibly.

The cache holds each run's settings and input conversations; the requests are rebuilt from them exactly as the
run built them, and their answers looked up by key. A conversation with a turn not (yet) answered is left out
and counted. The file is written beside its final name and renamed into place, so a reader never sees half of it.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from formats.writers.base import RenderError, encode_line

from . import plan
from .cache import connect_readonly, reported
from .conversation import Conversation
from .engine import decode_conversation
from .errors import UsageError
from .requests import TeacherResponse
from .settings import RunSettings, Sampling


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


def answers_for(
    conn: sqlite3.Connection, conversation: Conversation, settings: RunSettings
) -> tuple[list[TeacherResponse], bool]:
    """The stored answers of each turn in order, and whether a turn failed for good (vs not answered yet)."""
    answers: list[TeacherResponse] = []
    for k in range(plan.turn_count(conversation, settings)):
        key = plan.request_for(conversation, settings, k, [a.text for a in answers]).key
        row = conn.execute(
            "SELECT text, finish_reason, prompt_tokens, completion_tokens FROM responses WHERE key = ?",
            (key,),
        ).fetchone()
        if row is None:
            failed = conn.execute("SELECT 1 FROM failures WHERE key = ?", (key,)).fetchone() is not None
            return answers, failed
        answers.append(TeacherResponse(*row))
    return answers, False


def export(
    cache_path: Path, output: Path, output_format: str = "messages", run_id: str | None = None
) -> ExportResult:
    """Write the answered conversations of ``run_id`` (default: the latest run) to ``output``."""
    from formats.writers import open_writer

    writer = open_writer(output_format)
    conn = connect_readonly(Path(cache_path))
    try:
        with reported(Path(cache_path)):  # a damaged page is a CacheError, not a traceback
            result = _export(conn, writer, Path(output), run_id)
    finally:
        conn.close()
    return result


def _export(conn: sqlite3.Connection, writer, output: Path, run_id: str | None) -> ExportResult:
    run_id = run_id or latest_run(conn)
    settings = stored_settings(conn, run_id)
    result = ExportResult(output, run_id)
    tmp = Path(f"{output}.tmp")
    with open(tmp, "wb") as out:
        for conversation in stored_conversations(conn, run_id):
            line = _render(conn, conversation, settings, writer, result)
            if line is not None:
                out.write(line)
    os.replace(tmp, output)
    return result


def _render(
    conn, conversation: Conversation, settings: RunSettings, writer, result: ExportResult
) -> bytes | None:
    answers, failed = answers_for(conn, conversation, settings)
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
