"""Stream the records of a JSON file without loading it whole.

Three layouts are read, told apart by their first bytes:

* **JSONL**: one value per line; a record's source is ``NAME:LINE`` (1-based, blank lines skipped).
* **JSON list** ``[...]``: items are decoded one at a time from a buffered read with
  :meth:`json.JSONDecoder.raw_decode`; a record's source is ``NAME#INDEX`` (0-based).
* **a single JSON object** spread over several lines: one record, source ``NAME#0``.

A file opening with ``{`` is JSONL when its first non-blank line (or, if that line is broken, its second) is a
complete JSON value on its own, else a single object.

A line or item that cannot be decoded is yielded as a :class:`ParseFailure` instead of a value, so the reader
turns it into a reject and goes on. In a JSON list a syntax error leaves no reliable place to resume, so the
failure covers the rest of the file and the stream ends there. Bytes that are not UTF-8 make a JSONL line a
failure; inside a JSON list they are decoded as U+FFFD (the list has to be decoded as one text).
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import orjson

from distill.errors import InputError

CHUNK_CHARS = 1 << 20
SNIFF_CHARS = 64 * 1024
_WHITESPACE = " \t\n\r"
_BOM = b"\xef\xbb\xbf"
_NUMBER_CHARS = "0123456789.eE+-"

Layout = Literal["jsonl", "list", "object", "empty"]


@dataclass(frozen=True, slots=True)
class ParseFailure:
    """A line or item that is not valid JSON; ``text`` is (the start of) what was there."""

    reason: str
    text: str = ""
    rest_lost: bool = False  # the file cannot be read past this point: every later record is lost


def layout_of(head: bytes, lines: Iterable[bytes] | None = None) -> Layout | None:
    """The layout of a file that starts with ``head``, or None when it is not JSON at all.

    JSONL is told from a single object by its first two non-blank lines: from ``lines`` (the file's lines) when
    given, so that a line longer than ``head`` is judged whole, else from ``head``.
    """
    text = head.removeprefix(_BOM).decode("utf-8", errors="replace").lstrip(_WHITESPACE)
    if not text:
        return "empty"
    if text[0] == "[":
        return "jsonl" if _opens_jsonl(text) else "list"
    if text[0] != "{":  # JSONL may open with a bad record: null, a number, a string
        first_two = islice((line for line in text.splitlines() if line.strip()), 2)
        return "jsonl" if any(_is_json_value(line) for line in first_two) else None
    candidates: Iterable[str | bytes] = lines if lines is not None else text.splitlines()
    non_blank = (
        line.removeprefix(_BOM) if isinstance(line, bytes) else line for line in candidates if line.strip()
    )
    if any(_is_json_value(line) for line in islice(non_blank, 2)):
        return "jsonl"
    if _broken_before_the_end(text):
        return "jsonl"  # JSONL whose first lines are broken: each line is a record (or a reject) of its own
    return "object"


def _opens_jsonl(text: str) -> bool:
    """True when ``text`` opens with a whole JSON value on a line of its own and goes on: JSONL whose first
    record is a bare array, not a JSON list (only the sniffed text is looked at: a one-line list may be huge)."""
    first, newline, rest = text.partition("\n")
    return bool(newline) and bool(rest.strip(_WHITESPACE)) and _is_json_value(first)


def _broken_before_the_end(text: str) -> bool:
    """True when ``text`` is not the start of one JSON value: a syntax error before the text runs out."""
    try:
        json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError as e:
        ran_out = e.pos >= len(text.rstrip(_WHITESPACE)) or e.msg.startswith("Unterminated string")
        return not ran_out
    except RecursionError:
        return False
    return False


def first_value(head: bytes) -> Any:
    """The first record of a file starting with ``head`` when it fits in ``head``, else None."""
    text = head.removeprefix(_BOM).decode("utf-8", errors="replace").lstrip(_WHITESPACE)
    layout = layout_of(head)
    if layout == "jsonl":
        for line in text.splitlines():  # the first object: a bad first record (null, an array) is no clue
            if _is_json_value(line) and isinstance(value := json.loads(line), dict):
                return value
        return None
    start = 1 if layout == "list" else 0
    try:
        value, _ = json.JSONDecoder().raw_decode(text, _skip_ws(text, start))
    except json.JSONDecodeError:
        return None
    return value


def first_record(path: Path, unwrap: str | None = None) -> Any:
    """The first record of ``path`` read whole (None when there is none or it is not valid JSON)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return _first_record(path, stat.st_size, stat.st_mtime_ns, unwrap)


@lru_cache(maxsize=8)
def _first_record(path: Path, size: int, mtime_ns: int, unwrap: str | None) -> Any:
    try:
        for _, value in iter_values(path, unwrap=unwrap):
            return None if isinstance(value, ParseFailure) else value
    except InputError:
        pass
    return None


def iter_values(path: Path, unwrap: str | None = None) -> Iterator[tuple[str, Any]]:
    """Yield ``(source, value_or_ParseFailure)`` for every record of ``path`` in file order.

    With ``unwrap``, a file that is one object holding a list under that key (``{"version": ..., "data": [...]}``)
    yields the items of that list (sources ``NAME#INDEX``), streamed like a JSON list.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_CHARS)
            f.seek(0)
            layout = layout_of(head, iter(f))
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    if layout is None:
        raise InputError(
            f"{path} is not JSON or JSONL (it does not start with '[' or '{{'); check the file or --format"
        )
    if unwrap and layout in ("jsonl", "object"):
        found = yield from _iter_under_key(path, unwrap)
        if found:
            return
    if layout == "jsonl":
        yield from _iter_jsonl(path)
    elif layout == "list":
        yield from _iter_list(path)
    elif layout == "object":
        yield from _iter_object(path)


def _is_json_value(line: str | bytes) -> bool:
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError:
        try:
            json.loads(line)
        except ValueError:
            return False
    return True


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WHITESPACE:
        pos += 1
    return pos


def decode_line(raw: bytes) -> Any:
    """One JSONL line as a value, or a :class:`ParseFailure`."""
    try:
        return orjson.loads(raw)  # a line's end is whitespace to JSON
    except orjson.JSONDecodeError:
        pass
    raw = raw.rstrip(b"\r\n")  # so that an error's column, and the rejected text, are those of the line
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return ParseFailure(
            f"line is not valid UTF-8 (byte {e.start})", raw.decode("utf-8", errors="replace")
        )
    try:
        # the standard library accepts what orjson refuses but JSON allows (lone surrogate escapes)
        return json.loads(text)
    except json.JSONDecodeError as e:
        return ParseFailure(f"invalid JSON: {e.msg.removesuffix(' at')} at column {e.colno}", text)
    except RecursionError:
        return ParseFailure("invalid JSON: nested too deeply", text[:200])


def _iter_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    name = path.name
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1:
                raw = raw.removeprefix(_BOM)
            if not raw or raw.isspace():
                continue
            yield f"{name}:{lineno}", decode_line(raw)


class _TextBuffer:
    """A growing window over a text file: ``text[pos:]`` is what has been read but not consumed."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.text = ""
        self.pos = 0
        self.eof = False

    def more(self, at_least: int = 0) -> bool:
        """Read at least ``at_least`` (and at least ``CHUNK_CHARS``) more characters; False at end of file."""
        if self.eof:
            return False
        chunk = self.f.read(max(at_least, CHUNK_CHARS))
        if not chunk:
            self.eof = True
            return False
        if self.pos > CHUNK_CHARS:
            self.text = self.text[self.pos :]
            self.pos = 0
        self.text += chunk
        return True

    def skip_ws(self) -> str:
        """Skip whitespace; the next character, or '' at end of file."""
        while True:
            self.pos = _skip_ws(self.text, self.pos)
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.more():
                return ""

    def decode(self, decoder: json.JSONDecoder) -> Any:
        """Decode one value at ``pos``, reading more as needed; raises JSONDecodeError at end of file."""
        while True:
            try:
                value, end = decoder.raw_decode(self.text, self.pos)
            except json.JSONDecodeError:
                # incomplete or invalid: only the end of the file can tell; grow geometrically to stay linear
                if self.more(len(self.text) - self.pos):
                    continue
                raise
            if _may_continue(self.text, end) and self.more():
                continue  # a number at the end of the buffer may go on ("1" then "2.5")
            self.pos = end
            return value


def _iter_list(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        buf = _TextBuffer(f)
        buf.skip_ws()
        items = yield from _stream_list(buf, path.name)
        if items is not None and buf.skip_ws():
            yield (
                f"{path.name}#{items}",
                ParseFailure("extra data after the JSON list; a file holds one list, one object or JSONL"),
            )


def _stream_list(buf: _TextBuffer, name: str) -> Generator[tuple[str, Any], None, int | None]:
    """Yield the items of the list that starts at ``buf.pos`` (on its ``[``); return how many when it closes."""
    decoder = json.JSONDecoder()
    buf.pos += 1
    index = 0
    while True:
        ch = buf.skip_ws()
        if ch == "]":
            buf.pos += 1
            return index
        if index > 0:
            if ch != ",":
                yield _rest_failed(
                    name, index, f"expected ',' or ']' but found {ch!r}" if ch else "the list is not closed"
                )
                return
            buf.pos += 1
            if buf.skip_ws() == "":
                yield _rest_failed(name, index, "the list is not closed")
                return
        elif ch == "":
            yield _rest_failed(name, index, "the list is not closed")
            return
        try:
            value = buf.decode(decoder)
        except json.JSONDecodeError as e:
            yield _rest_failed(name, index, f"invalid JSON: {e.msg}")
            return
        except RecursionError:
            yield _rest_failed(name, index, "invalid JSON: nested too deeply")
            return
        yield f"{name}#{index}", value
        index += 1


def _iter_under_key(path: Path, key: str) -> Generator[tuple[str, Any], None, bool]:
    """Stream the list under ``key`` of the file's top-level object; False (having yielded nothing) if there is none."""
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        buf = _TextBuffer(f)
        if buf.skip_ws() != "{":
            return False
        buf.pos += 1
        try:
            while True:
                ch = buf.skip_ws()
                if ch == ",":
                    buf.pos += 1
                    ch = buf.skip_ws()
                if ch != '"':
                    return False
                name = buf.decode(decoder)
                if buf.skip_ws() != ":":
                    return False
                buf.pos += 1
                if buf.skip_ws() == "[" and name == key:
                    yield from _stream_list(buf, path.name)
                    return True
                buf.decode(decoder)  # another key's value: skipped
        except (json.JSONDecodeError, RecursionError):
            return False


def _may_continue(text: str, end: int) -> bool:
    """True when everything after ``end`` could still be part of a number (so more text may extend it)."""
    while end < len(text):
        if text[end] not in _NUMBER_CHARS:
            return False
        end += 1
    return True


def _rest_failed(name: str, index: int, why: str) -> tuple[str, ParseFailure]:
    return f"{name}#{index}", ParseFailure(
        f"{why}; item {index} and everything after it cannot be read", rest_lost=True
    )


def _iter_object(path: Path) -> Iterator[tuple[str, Any]]:
    name = path.name
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        buf = _TextBuffer(f)
        buf.skip_ws()
        try:
            value = buf.decode(decoder)
        except json.JSONDecodeError as e:
            reason = f"invalid JSON: {e.msg} at line {e.lineno} column {e.colno}"
            yield f"{name}#0", ParseFailure(reason, rest_lost=True)
            return
        except RecursionError:
            yield f"{name}#0", ParseFailure("invalid JSON: nested too deeply", rest_lost=True)
            return
        yield f"{name}#0", value
        if buf.skip_ws():
            yield (
                f"{name}#1",
                ParseFailure("extra data after the JSON object; a file holds one object, a list or JSONL"),
            )
