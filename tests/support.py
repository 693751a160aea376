"""Helpers the tests that drive ``distill`` as a process share."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

DISTILL = [sys.executable, "-m", "distill"]


def run_command(server, data: Path, cache: Path, output: Path, *extra: str) -> list[str]:
    """The command line of ``distill run`` over ``data`` against the local teacher ``server``."""
    return [*DISTILL, "run", str(data), "--model", "teacher", "--base-url", server.base_url,
            "--cache", str(cache), "--output", str(output), *extra]  # fmt: skip


def numbered_question(conversation: int, turn: int) -> str:
    return f"conversation {conversation}, question {turn}"


def write_multi_turn(
    path: Path, conversations: int, turns: int, question: Callable[[int, int], str] = numbered_question
) -> Path:
    """``messages`` JSONL: each conversation's user turns, each followed by a dataset answer the teacher replaces."""
    with open(path, "w", encoding="utf-8") as f:
        for c in range(conversations):
            messages = []
            for t in range(turns):
                messages.append({"role": "user", "content": question(c, t)})
                messages.append(
                    {"role": "assistant", "content": "the dataset's own answer, replaced by the teacher's"}
                )
            f.write(json.dumps({"id": f"conv-{c}", "messages": messages}) + "\n")
    return path


class FakeClock:
    """A clock that stands still until a test moves ``now``."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
