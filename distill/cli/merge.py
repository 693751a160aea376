"""``distill merge OUT IN1 IN2 ...``: join caches (e.g. the shards of ``distill run --shard I/N``) into one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distill.merge import merge


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "merge",
        help="merge caches (e.g. the shards of 'distill run --shard I/N') into one",
        description="Merge distill caches into OUT (created if missing): identical answers are stored once, "
        "runs and conversations are kept, so 'distill export --cache OUT' writes the whole dataset.",
    )
    p.add_argument("output", type=Path, help="the cache to write (new, or an existing cache to add to)")
    p.add_argument("inputs", type=Path, nargs="+", help="caches to merge into it")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing on success")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    result = merge(args.output, args.inputs)
    if not args.quiet:
        print(result.summary(), file=sys.stdout)
    return 0
