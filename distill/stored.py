"""How a run's settings and input conversations are stored in the cache, and how they are read back.

The engine stores each run's settings and conversations as it reads them; export and the batch runner rebuild
the run's requests from them exactly as the run built them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import orjson

from .conversation import Conversation, Message
from .errors import UsageError
from .settings import RunSettings, Sampling


def encode_conversation(conversation: Conversation) -> bytes:
    """How a conversation is stored in the cache's ``conversations`` table: canonical JSON (sorted keys), which a
    rerun compares byte for byte with what it reads."""
    if conversation.meta:
        return orjson.dumps(
            {"messages": [m.to_dict() for m in conversation.messages], "meta": conversation.meta},
            option=orjson.OPT_SORT_KEYS,
        )
    # No metadata: every key is known and written in sorted order here, so orjson need not sort
    messages = [
        {"content": m.content, "role": m.role}
        if m.weight is None
        else {"content": m.content, "role": m.role, "weight": m.weight}
        for m in conversation.messages
    ]
    return orjson.dumps({"messages": messages, "meta": {}})


def decode_conversation(conv_id: str, source: str, data: bytes) -> Conversation:
    obj = orjson.loads(data)
    messages = [Message(m["role"], m["content"], m.get("weight")) for m in obj["messages"]]
    return Conversation(conv_id, messages, source, obj.get("meta") or {})


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
