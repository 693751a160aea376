"""Reading a large input in a child process, so that the run's event loop keeps its core for the teacher.

At thousands of answers a second the event loop is the bottleneck, and parsing the input and building its
conversations was a sixth of what distill itself costs it (issue 12: ~5 us of ~33 a single-turn conversation,
measured with ``bench/engine_overhead.py``). :func:`read_in_a_process` hands ``distill run`` a stand-in for its
reader: a child process (``python -m formats.reading_process``) runs the same reader class on the same file and
sends the records down a pipe in batches, which the parent turns back into records in a third of the time
(``marshal`` and the records' constructors; ``pickle`` for a batch holding anything ``marshal`` refuses).

The stream is the reader's own: the same records in the same order, a reader's error raised after the records
that came before it, and the reader's ``stats`` there once the stream ends. A small input is read in the run's
process (a child costs a start-up; :data:`MIN_BYTES`), and so is one whose reader a fresh interpreter could not
import (a class defined in ``__main__`` or inside a function). Closing the stream early ends the child.
"""

from __future__ import annotations

import contextlib
import importlib
import marshal
import os
import pickle
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from distill.conversation import Conversation, Message, Record, Reject
from distill.errors import InputError

from .readers.base import Reader

MIN_BYTES = 1 << 20  # inputs smaller than this are read in the run's process
BATCH = 256  # records a message
HEADER = struct.Struct(">IB")  # each message: its payload's length, its kind, then the payload
MARSHALLED, PICKLED, FAILED, ENDED = 1, 2, 3, 4


def read_in_a_process(reader: Reader, path: Path, min_bytes: int | None = None) -> Reader | ReadingProcess:
    """What a run reads ``path`` through: ``reader`` itself, or a :class:`ReadingProcess` running its class."""
    try:
        large = path.is_file() and path.stat().st_size >= (MIN_BYTES if min_bytes is None else min_bytes)
    except OSError:
        large = False
    if not large or not importable(type(reader)):
        return reader
    return ReadingProcess(reader)


def importable(cls: type) -> bool:
    """Whether a fresh interpreter given this one's ``sys.path`` finds ``cls`` by its module and qualified name."""
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        return False
    try:
        return _class_named(cls.__module__, cls.__qualname__) is cls
    except (ImportError, AttributeError):
        return False


class ReadingProcess:
    """Reads like ``reader`` (``read(path)``, ``name``, ``stats``), with the reading done by a child process."""

    def __init__(self, reader: Reader) -> None:
        self.name = reader.name
        self.options = reader.options
        self.stats: dict[str, int] = dict(reader.stats)
        self._class = type(reader)

    def read(self, path: Path) -> Iterator[Record]:
        """Every record of ``path`` in file order, as ``reader.read(path)`` yields them."""
        child = subprocess.Popen(
            [sys.executable, "-m", __name__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert child.stdin is not None and child.stdout is not None
        try:
            # the run's import path: a reader class it imported is found by the child the same way
            order = (
                sys.path,
                self._class.__module__,
                self._class.__qualname__,
                self.options,
                os.fspath(path),
            )
            with contextlib.suppress(BrokenPipeError):  # a child that failed to start: told below
                child.stdin.write(pickle.dumps(order, protocol=pickle.HIGHEST_PROTOCOL))
                child.stdin.close()
            while (message := _receive(child.stdout)) is not None:
                kind, payload = message
                if kind == MARSHALLED:
                    yield from _records(marshal.loads(payload))
                elif kind == PICKLED:
                    yield from pickle.loads(payload)
                elif kind == FAILED:
                    raise pickle.loads(payload)
                else:
                    self.stats.update(pickle.loads(payload))
                    return
            status = child.wait()
            raise InputError(
                f"the process reading {path} ended (exit status {status}) before the end of the input"
            )
        finally:
            if child.poll() is None:
                child.kill()
            child.stdout.close()
            child.wait()


def _records(rows: list[tuple[Any, ...]]) -> Iterator[Record]:
    for row in rows:
        if row[0] == "c":
            _, id_, source, messages, meta = row
            yield Conversation(id_, [Message(*m) for m in messages], source, {} if meta is None else meta)
        else:
            yield Reject(*row[1:])


def _rows(records: list[Record]) -> list[tuple[Any, ...]] | None:
    """``records`` as plain tuples for ``marshal``; None when one is of a subclass (pickle keeps its type)."""
    rows: list[tuple[Any, ...]] = []
    for r in records:
        if type(r) is Conversation and all(type(m) is Message for m in r.messages):
            messages = tuple((m.role, m.content, m.weight) for m in r.messages)
            rows.append(("c", r.id, r.source, messages, r.meta or None))
        elif type(r) is Reject:
            rows.append(("r", r.source, r.reason, r.record, r.ends_input))
        else:
            return None
    return rows


def _receive(source: BinaryIO) -> tuple[int, bytes] | None:
    head = source.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    size, kind = HEADER.unpack(head)
    payload = source.read(size)
    return (kind, payload) if len(payload) == size else None


def _send(sink: BinaryIO, kind: int, payload: bytes) -> None:
    sink.write(HEADER.pack(len(payload), kind))
    sink.write(payload)


def _send_batch(sink: BinaryIO, records: list[Record]) -> None:
    rows = _rows(records)
    if rows is not None:
        try:
            _send(sink, MARSHALLED, marshal.dumps(rows))
            return
        except ValueError:  # a value marshal does not know (a datetime in ``meta``, say)
            pass
    _send(sink, PICKLED, pickle.dumps(records, protocol=pickle.HIGHEST_PROTOCOL))


def _failure(error: Exception, path: str) -> bytes:
    """``error`` pickled, or an InputError saying what it was when it does not survive pickling."""
    try:
        payload = pickle.dumps(error, protocol=pickle.HIGHEST_PROTOCOL)
        if isinstance(pickle.loads(payload), Exception):
            return payload
    except (pickle.PicklingError, TypeError, AttributeError, ValueError):  # it does not survive pickling
        pass
    return pickle.dumps(InputError(f"reading {path} failed: {type(error).__name__}: {error}"))


def _class_named(module: str, qualname: str) -> Any:
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def serve(source: BinaryIO, sink: BinaryIO) -> None:
    """The child: read the order on ``source``, send the records on ``sink``, then the reader's stats."""
    sys.path[:], module, qualname, options, path = pickle.loads(source.read())
    batch: list[Record] = []
    try:
        reader = _class_named(module, qualname)(options)
        for record in reader.read(Path(path)):
            batch.append(record)
            if len(batch) >= BATCH:
                _send_batch(sink, batch)
                batch = []
    except Exception as error:  # every error is the parent's to raise, after the records that came before it
        if batch:
            _send_batch(sink, batch)
        _send(sink, FAILED, _failure(error, path))
        return
    if batch:
        _send_batch(sink, batch)
    _send(sink, ENDED, pickle.dumps(dict(reader.stats)))


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the run's: it closes the stream, which ends this
    with contextlib.suppress(BrokenPipeError):  # the run stopped reading: nothing is waiting for the rest
        serve(sys.stdin.buffer, sys.stdout.buffer)
        sys.stdout.buffer.flush()
