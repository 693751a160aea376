"""The writer interface and the registry of output formats."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from distill.conversation import Conversation
from distill.registry import Registry

WRITERS: Registry[type[Writer]] = Registry(
    "output format",
    "distill.writers",
    builtin_modules=(
        "formats.writers.messages",
        "formats.writers.llama2",
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


def open_writer(spec: str) -> Writer:
    """The writer for ``--output-format`` ``spec`` (``NAME`` or ``NAME:ARG``)."""
    name, _, argument = spec.partition(":")
    return WRITERS.get(name)(argument or None)
