"""What ``distill run`` does with the input before the engine sees it: conversations the output format cannot
hold become rejects (so they are never paid for), and a run that read nothing gets a hint about ``--format``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from distill.conversation import Conversation, Record, Reject
from distill.errors import DistillError, InputError

from .readers.base import SNIFF_BYTES
from .writers.base import Writer


def screened(records: Iterable[Record], writer: Writer) -> Iterator[Record]:
    """``records``, with each conversation that ``writer`` refuses turned into a :class:`Reject`."""
    for record in records:
        if isinstance(record, Conversation):
            reason = writer.refusal(record)
            if reason is not None:
                yield Reject(record.source, f"{writer.name}: {reason}", {"id": record.id})
                continue
        yield record


def format_hint(path: Path, given: str | None) -> str | None:
    """A fix for a run that read no conversation: the format ``path`` looks like, when ``--format`` said another."""
    from .readers.base import detect

    if given is None:
        return None
    try:
        detected = detect(path)
    except (DistillError, OSError):
        return None
    if detected == given:
        return None
    return f"the file looks like {detected}: pass --format {detected} (or leave --format out to detect it)"


def check_not_blank(path: Path) -> None:
    """An InputError saying the input ``is empty`` when it holds nothing but whitespace (or a byte-order mark)."""
    if path.is_file() and _is_blank(path):
        raise InputError(f"input file {path} is empty: there is nothing to distil")


def _is_blank(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
        if head.removeprefix(b"\xef\xbb\xbf").strip():
            return False
        return not f.read(1)
