"""Readers turn a dataset file into a stream of :class:`~distill.conversation.Conversation` records.

``READERS.get(name)`` returns the class; ``detect(path)`` picks one from the file's contents.
"""

from .base import READERS, Reader, ReaderOptions, detect, open_reader

__all__ = ["READERS", "Reader", "ReaderOptions", "detect", "open_reader"]
