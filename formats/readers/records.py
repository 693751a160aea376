"""Readers whose input is a stream of JSON records, one conversation per record.

A subclass says which keys mark its records (:meth:`RecordReader.claims`) and turns one record into a
:class:`~distill.conversation.Conversation` (:meth:`RecordReader.convert`, raising
:class:`~formats.readers.normalise.BadRecord` for a record it cannot use). Reading JSON, JSONL and wrapped lists,
rejects and sniffing are shared; the ``hf`` reader feeds the rows of a ``datasets`` dataset to the same
:meth:`~RecordReader.convert`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from distill.conversation import Conversation, Record, Reject

from .base import Reader, ReaderOptions
from .jsonstream import ParseFailure, first_record, first_value, iter_values
from .normalise import BadRecord


class RecordReader(Reader):
    """A reader of JSON records; ``unwrap`` names the key of a wrapper object's list of records (CoQA's ``data``)."""

    unwrap: ClassVar[str | None] = None

    def __init__(self, options: ReaderOptions | None = None) -> None:
        super().__init__(options)
        self.check_options()

    @classmethod
    def claims(cls, record: Mapping[str, Any]) -> bool:
        """True when ``record`` (a first record, or a first dataset row) is in this reader's format."""
        raise NotImplementedError

    @classmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        record = first_value(head)
        if cls.unwrap and isinstance(record, dict) and isinstance(record.get(cls.unwrap), list):
            items = record[cls.unwrap]
            record = items[0] if items else None
        if record is None and head:  # the first record is longer than the head: read it whole
            record = first_record(Path(path), cls.unwrap)
        return isinstance(record, dict) and cls.claims(record)

    def read(self, path: Path) -> Iterator[Record]:
        self.check_options()
        for source, value in iter_values(Path(path), unwrap=self.unwrap):
            if isinstance(value, ParseFailure):
                yield Reject(source, value.reason, value.text or None, ends_input=value.rest_lost)
                continue
            yield self.record(source, value)

    def record(self, source: str, value: Any) -> Record:
        """One record as a conversation, or a reject saying why not."""
        if not isinstance(value, dict):
            return Reject(source, f"expected a JSON object, got {type(value).__name__}", value)
        try:
            conversation = self.convert(source, value)
        except BadRecord as e:
            return Reject(source, str(e), value)
        if not (type(conversation.id) is str and conversation.id.isascii()):  # else stored as it is
            conversation.id = storable(conversation.id)
        if conversation.meta:
            conversation.meta = storable(conversation.meta)
        return conversation

    def check_options(self) -> None:
        """Validate reader options (a UsageError naming the option) and reset per-read state; run on creation
        and at the start of every :meth:`read`."""

    def convert(self, source: str, record: dict[str, Any]) -> Conversation:
        """Turn one record into a conversation; raise BadRecord when it cannot be used."""
        raise NotImplementedError


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_INT_RANGE = range(-(2**63), 2**64)


def storable(value: Any) -> Any:
    """``value`` as the cache can store it (UTF-8, 64-bit integers): a lone surrogate becomes U+FFFD, an integer out
    of range its decimal string. Readers pass ids and metadata through from the source, which may hold either."""
    if isinstance(value, str):
        return value if value.isascii() else _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, int) and not isinstance(value, bool) and value not in _INT_RANGE:
        return str(value)
    if isinstance(value, list):
        return [storable(item) for item in value]
    if isinstance(value, dict):
        return {storable(key): storable(item) for key, item in value.items()}
    return value


def fill(template: str, **values: str) -> str:
    """``template`` with each ``{name}`` of ``values`` replaced; other braces are left alone."""
    for name, value in values.items():
        template = template.replace("{" + name + "}", value)
    return template


def text_field(record: Mapping[str, Any], key: str, what: str | None = None) -> str:
    """The non-blank string ``record[key]``, or BadRecord naming the key."""
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise BadRecord(f"no {what or repr(key)} text (key {key!r} missing, empty or not a string)")
    return value
