"""What the Together trainer asks of the terminal: a yes/no question (cancel the job?) and Ctrl-C held while a
step that must not be cut in half runs.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

Confirm = Callable[[str], bool]


def ask_on_terminal(question: str) -> bool:
    """Ask ``question`` on the terminal; True on yes. A second Ctrl-C or end of input counts as no."""
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except (EOFError, KeyboardInterrupt):
        print(file=sys.stderr)
        return False


def default_confirm() -> Confirm | None:
    """Ask on the terminal when stdin is one; None (never cancel) otherwise."""
    return ask_on_terminal if sys.stdin is not None and sys.stdin.isatty() else None


@dataclass(slots=True)
class Held:
    """Whether a Ctrl-C came while :func:`interrupts_held` held it."""

    caught: bool = False


@contextmanager
def interrupts_held() -> Iterator[Held]:
    """Hold Ctrl-C (SIGINT) until the block is over; ``caught`` says whether one came. Main thread only."""
    held = Held()
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield held
        return

    def hold(signum: int, frame: object) -> None:
        held.caught = True

    signal.signal(signal.SIGINT, hold)
    try:
        yield held
    finally:
        signal.signal(signal.SIGINT, previous)
