"""The body of an OpenAI chat or completions answer, as the servers distill ships (its teacher, ``distill serve``)
send it: one choice with its ``finish_reason``, and ``usage`` with prompt, completion and total tokens."""

from __future__ import annotations

import time
from typing import Any


def completion_body(
    kind: str,
    *,
    answer_id: str,
    model: str,
    text: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    """``chat.completion`` for ``kind`` "chat" (id ``chatcmpl-ID``), else ``text_completion`` (``cmpl-ID``)."""
    if kind == "chat":
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}}
        obj, prefix = "chat.completion", "chatcmpl"
    else:
        choice = {"index": 0, "text": text, "logprobs": None}
        obj, prefix = "text_completion", "cmpl"
    choice["finish_reason"] = finish_reason
    return {
        "id": f"{prefix}-{answer_id}",
        "object": obj,
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
