"""How many conversations an input holds, estimated cheaply so the progress display can show an ETA.

A JSONL file holds about one record per line. In a JSON list or object the records are counted by how often
a conversation key (``"conversations"``, ``"messages"``) occurs, an estimate that needs no parsing. Either way
the file is scanned at disk speed in a worker thread while the run goes; None when nothing can be said.
"""

from __future__ import annotations

from pathlib import Path

CHUNK = 1 << 20
RECORD_KEYS = (b'"conversations"', b'"messages"')


def estimate_records(path: Path) -> int | None:
    try:
        with open(path, "rb") as f:
            head = f.read(CHUNK)
            jsonl = _looks_like_jsonl(head)
            newlines = keys = 0
            tail = b""
            chunk = head
            while chunk:
                newlines += chunk.count(b"\n")
                window = tail + chunk
                tail = window[-32:]
                # A key that straddles two chunks is counted in the window that ends with it, once.
                keys += _keys_in(window) - _keys_in(tail)
                last = chunk
                chunk = f.read(CHUNK)
    except OSError:
        return None
    if jsonl:
        return newlines + (0 if head == b"" or last.endswith(b"\n") else 1)
    return keys + _keys_in(tail) or None


def _keys_in(data: bytes) -> int:
    return max(data.count(key) for key in RECORD_KEYS)


def _looks_like_jsonl(head: bytes) -> bool:
    lines = [line for line in head.split(b"\n") if line.strip()][:2]
    return len(lines) == 2 and lines[0].lstrip().startswith(b"{") and lines[0].rstrip().endswith(b"}")
