"""The writer interface, the registry of output formats, and the one way output lines are encoded."""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import orjson

from distill.conversation import Conversation
from distill.errors import RenderError
from distill.registry import Registry

__all__ = ["WRITERS", "RenderError", "Writer", "encode_line", "open_writer"]

WRITERS: Registry[type[Writer]] = Registry(
    "output format",
    "distill.writers",
    builtin_modules=(
        "formats.writers.messages",
        "formats.writers.llama2",
        "formats.writers.llama3",
        "formats.writers.prompt_completion",
        "formats.writers.template",
    ),
    flag="--output-format",
)


class Writer(ABC):
    """Turns one finished conversation (system?, user, assistant, ...) into one JSON object (one line).

    ``argument`` is what followed the colon in ``--output-format NAME:ARG`` (``template:FILE``), else None.
    """

    name: ClassVar[str]

    def __init__(self, argument: str | None = None) -> None:
        self.argument = argument

    @abstractmethod
    def render(self, conversation: Conversation) -> dict[str, Any]:
        """The JSON object for one line of the output file."""

    def refusal(self, conversation: Conversation) -> str | None:
        """Why this writer cannot write ``conversation`` whatever the teacher answers, else None.

        Asked of every conversation as it is read, so one the output format cannot hold is rejected before any
        request is paid for.
        """
        return None

    def line(self, conversation: Conversation) -> bytes:
        """The output line for one conversation, newline included (what :func:`distill.export.export` takes)."""
        return encode_line(self.render(conversation))


def open_writer(spec: str) -> Writer:
    """The writer for ``--output-format`` ``spec`` (``NAME`` or ``NAME:ARG``)."""
    name, _, argument = spec.partition(":")
    return WRITERS.get(name)(argument or None)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def encode_line(obj: dict[str, Any]) -> bytes:
    """One output line: compact UTF-8 JSON (non-ASCII kept as is) and a newline; deterministic.

    Unpaired surrogates (which are not valid UTF-8) are written as U+FFFD; integers beyond 64 bits (possible in
    a rejected record) are written by the standard library instead of orjson.
    """
    try:
        return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:
        clean = _without_surrogates(obj)
        return (json.dumps(clean, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def _without_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_without_surrogates(k): _without_surrogates(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_surrogates(v) for v in value]
    return value
