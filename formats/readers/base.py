"""The reader interface, the registry of readers and format detection."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from distill.conversation import Record
from distill.errors import InputError, UsageError
from distill.registry import Registry

READERS: Registry[type[Reader]] = Registry(
    "input format",
    "distill.readers",
    builtin_modules=(
        "formats.readers.sharegpt",
        "formats.readers.messages",
        "formats.readers.coqa",
        "formats.readers.booksum",
        "formats.readers.hints",
        "formats.readers.hf",
    ),
    flag="--format",
)

SNIFF_BYTES = 64 * 1024


@dataclass(slots=True)
class ReaderOptions:
    """Options every reader accepts; a reader ignores those that do not apply to it.

    ``system_prompt`` replaces (or supplies) the system prompt of every conversation. ``extra`` holds
    reader-specific settings (``--reader-opt KEY=VALUE`` on the command line).
    """

    system_prompt: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Reader(ABC):
    """Reads one file as a stream of records, never holding the whole file in memory.

    A subclass sets ``name``, implements :meth:`sniff` (does this file look like mine?) and :meth:`read`.
    A record that cannot be used is yielded as a :class:`~distill.conversation.Reject`, never raised.
    Invalid reader options raise a :class:`~distill.errors.UsageError` when the reader is created.
    """

    name: ClassVar[str]

    def __init__(self, options: ReaderOptions | None = None) -> None:
        self.options = options or ReaderOptions()
        # counts for the run's summary (e.g. booksum's chapters over the context window), filled while reading
        self.stats: dict[str, int] = {}

    @classmethod
    @abstractmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        """True when ``head`` (the file's first bytes) looks like this reader's format."""

    @abstractmethod
    def read(self, path: Path) -> Iterator[Record]:
        """Yield every record of ``path`` in file order."""


def detect(path: Path) -> str:
    """Name the one reader whose format ``path`` is in, or raise a fix-it :class:`UsageError`."""
    try:
        if Path(path).is_dir():
            head = b""  # a dataset folder: only readers of directories (hf) claim it
        else:
            with open(path, "rb") as f:
                head = f.read(SNIFF_BYTES)
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    matches = [name for name in READERS.names() if READERS.get(name).sniff(path, head)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UsageError(
            f"cannot tell the format of {path}; pass --format with one of: {', '.join(READERS.names())}"
        )
    raise UsageError(f"{path} could be any of {', '.join(matches)}; pass --format to choose")


def open_reader(path: Path, fmt: str | None = None, options: ReaderOptions | None = None) -> Reader:
    """The reader for ``path``: ``fmt`` when given, else the detected one."""
    if not Path(path).exists() and fmt != "hf":  # hf also takes hub dataset names
        raise InputError(f"input file {path} does not exist")
    name = fmt or detect(path)
    return READERS.get(name)(options)
