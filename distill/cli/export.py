"""``distill export``: render a fine-tuning file from the cache alone, without asking the teacher anything."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distill.config import add_config_flag, option, resolve
from distill.export import export
from distill.runner import check_output, check_writable
from formats.writers import open_writer


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a fine-tuning file from the cache",
        description="Render a run's cached answers into a fine-tuning file, in input order.",
    )
    add_config_flag(p)
    option(p, "--cache", type=Path, default=Path("distill-cache.sqlite"), help="the cache a run wrote")
    option(p, "--output", "-o", type=Path, required=False, help="file to write")
    option(p, "--output-format", default="messages", help="messages | llama2 | ... (default: messages)")
    option(p, "--run", dest="run_id", help="run id (default: the latest run; 'distill stats' lists them)")
    option(
        p,
        "--val-fraction",
        type=float,
        default=0.0,
        help="share of conversations (by a stable hash of their id) written to OUTPUT_STEM.val.jsonl instead",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    resolve(args, "export")
    if args.output is None:
        from distill.errors import UsageError

        raise UsageError("pass --output FILE for the fine-tuning file")
    check_writable(args.output, "output", "--output")
    writer = open_writer(args.output_format)
    result = export(args.cache, args.output, writer.line, args.run_id, args.val_fraction)
    check_output(args.output)
    if result.validation_written:
        check_output(result.validation_path)
        print(f"wrote {result.validation_written} of them to {result.validation_path}", file=sys.stderr)
    print(
        f"wrote {result.written} conversations ({result.turns} turns) to {args.output}; "
        f"{result.incomplete} not finished, {result.failed} failed",
        file=sys.stderr,
    )
    return 1 if result.failed else 0
