"""Train/validation split by a stable hash of the conversation id (``--val-fraction``).

A conversation goes to validation when the first 8 bytes of ``sha256("distill-split\\0" + id)``, read as a fraction
of 2**64, fall below ``val_fraction``. The choice depends on the id alone: it is the same in every run, on every
machine, whatever the order or the other records, and raising the fraction only moves records from train to
validation.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from distill.errors import UsageError

SALT = b"distill-split\0"
Split = Literal["train", "validation"]


def check_fraction(val_fraction: float) -> float:
    """``val_fraction`` if it is in [0, 1), else a UsageError naming ``--val-fraction``."""
    if not 0.0 <= val_fraction < 1.0:
        raise UsageError(f"--val-fraction {val_fraction} must be at least 0 and below 1 (e.g. 0.05)")
    return val_fraction


def position(conversation_id: str) -> float:
    """Where ``conversation_id`` falls in [0, 1)."""
    digest = hashlib.sha256(SALT + conversation_id.encode("utf-8", errors="surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(conversation_id: str, val_fraction: float) -> Split:
    """``"validation"`` or ``"train"`` for this id."""
    return "validation" if position(conversation_id) < val_fraction else "train"


def validation_path(output: Path) -> Path:
    """The validation file beside ``output``: ``out.jsonl`` -> ``out.val.jsonl``."""
    output = Path(output)
    if output.suffix == ".jsonl":
        return output.with_name(output.stem + ".val.jsonl")
    return output.with_name(output.name + ".val.jsonl")
