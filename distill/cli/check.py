"""``distill check FILE``: validate a fine-tuning file against Together's data rules before uploading it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from formats.check import check_file
from formats.masking import prompt_loss_warning


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check",
        help="validate a fine-tuning JSONL file against Together's data rules",
        description=(
            "Check a fine-tuning file (text, messages, prompt/completion or preference JSONL) against Together's "
            "data rules and print every problem with its line and rule, then statistics. Exits 1 when any problem "
            "is found."
        ),
    )
    parser.add_argument("file", type=Path, metavar="FILE", help="the JSONL file to check")
    parser.add_argument(
        "--max-seq-length",
        type=int,
        metavar="N",
        help="also report every example longer than N tokens (estimated with cl100k_base)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = check_file(args.file, max_seq_length=args.max_seq_length)
    masking = prompt_loss_warning(report.data_format)
    if masking is not None:
        report.warnings.append(masking)
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
    else:
        print(report.format())
    return 0 if report.ok else 1
