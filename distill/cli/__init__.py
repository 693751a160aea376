"""The ``distill`` command: a thin layer over the Python API.

Each sub-command lives in its own module ``distill.cli.<name>`` exposing ``add_parser(subparsers)`` (which
registers the sub-command and sets ``func`` on its parser) and the function it sets. Errors that are
:class:`~distill.errors.DistillError` become one line on stderr and the error's exit code.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

from distill import __version__
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
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill",
        description="Turn conversations into fine-tuning data with a teacher model, then train and evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"distill {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        import_module(f"distill.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DistillError as e:
        print(f"distill {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"distill {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
