"""``OUTPUT.rejects.jsonl``: one JSON object per record a reader could not use.

Each line is ``{"source": "FILE:LINE" or "FILE#INDEX", "reason": "...", "record": <the record, when there was
one>}``. The file is opened for appending on the first reject, so a run without rejects leaves no file.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import IO

from distill.conversation import Reject
from distill.errors import InputError

from .writers.base import encode_line


def rejects_path_for(output: Path) -> Path:
    """``OUTPUT.rejects.jsonl``: ``out.jsonl`` -> ``out.jsonl.rejects.jsonl`` (as ``distill run`` names it)."""
    output = Path(output)
    return output.with_name(output.name + ".rejects.jsonl")


class RejectsWriter:
    """Appends rejects to ``path``; ``count`` is how many this writer wrote. Use as a context manager."""

    def __init__(self, path: Path, *, append: bool = True) -> None:
        self.path = Path(path)
        self.count = 0
        self._mode = "ab" if append else "wb"
        self._file: IO[bytes] | None = None

    def write(self, reject: Reject) -> None:
        """Write one reject (and flush, so a crash loses none)."""
        if self._file is None:
            try:
                self._file = open(self.path, self._mode)  # noqa: SIM115 - closed by close()
            except OSError as e:
                raise InputError(f"cannot write the rejects file {self.path}: {e.strerror}") from None
        self._file.write(reject_line(reject))
        self._file.flush()
        self.count += 1

    def remove_stale(self) -> None:
        """Remove an earlier run's file before this run writes any (call it once the run owns the output)."""
        if self._file is None and self.path.exists():
            self.path.unlink()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> RejectsWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def reject_line(reject: Reject) -> bytes:
    """One line of the rejects file (surrogates and integers beyond 64 bits survive, see ``encode_line``)."""
    return encode_line(reject.to_dict())
