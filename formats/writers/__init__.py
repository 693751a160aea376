"""Writers render finished conversations into the lines of a fine-tuning file."""

from .base import WRITERS, Writer, open_writer

__all__ = ["WRITERS", "Writer", "open_writer"]
