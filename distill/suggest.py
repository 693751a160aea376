"""The nearest valid name to a typo, for "did you mean" in error messages."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

CUTOFF = 0.6


def nearest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``word`` (difflib's ratio of at least :data:`CUTOFF`), else None."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=CUTOFF)
    return close[0] if close else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the nearest candidate, else an empty string."""
    close = nearest(word, candidates)
    return f" (did you mean {close}?)" if close else ""
