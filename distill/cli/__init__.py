"""The ``distill`` command: a thin layer over the Python API.

Each sub-command lives in its own module ``distill.cli.<name>`` exposing ``add_parser(subparsers)`` (which
registers the sub-command and sets ``func`` on its parser) and the function it sets. Errors that are
:class:`~distill.errors.DistillError` become one line on stderr and the error's exit code.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import import_module
from signal import SIGINT, SIGTERM

from distill import __version__
from distill.cli.parser import DistillParser
from distill.errors import DistillError

COMMANDS = (
    "run",
    "export",
    "check",
    "stats",
    "merge",
    "train",
    "eval",
    "deploy",
    "pipeline",
    "demo",
    "teacher",
    "serve",
    "view",
)


def build_parser() -> DistillParser:
    parser = DistillParser(
        prog="distill",
        description="Turn conversations into fine-tuning data with a teacher model, then train and evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"distill {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        import_module(f"distill.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    command = "distill"
    try:
        with signals_held() as held:  # while the commands' modules are imported
            args = build_parser().parse_args(argv)
        command = f"distill {args.command}"
        if held:
            raise KeyboardInterrupt
        if args.command == "run" and _main_thread():
            signal.signal(signal.SIGTERM, _interrupt)  # until the run's own handlers: stops it as Ctrl-C does
        return int(args.func(args) or 0)
    except DistillError as e:
        print(f"{command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


@contextmanager
def signals_held() -> Iterator[list[int]]:
    """SIGINT and SIGTERM are noted instead of acted on while the block runs; the list holds those received.

    A KeyboardInterrupt raised in the middle of an import can leave the interpreter set to die by SIGINT at exit
    even when the exception was handled (Python 3.11), and a SIGTERM would kill without a word.
    """
    received: list[int] = []
    if not _main_thread():  # only the main thread may set handlers (main() called from a thread)
        yield received
        return
    previous = {
        sig: signal.signal(sig, lambda signum, _: received.append(signum)) for sig in (SIGINT, SIGTERM)
    }
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
