"""``distill pipeline``: distil, check, train, wait and evaluate from one TOML file (see :mod:`distill.pipeline`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distill.pipeline import run_pipeline


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "pipeline",
        help="distil -> check -> train -> evaluate, from one TOML file",
        description="Run the whole recipe from CONFIG: one table per step, keyed by that step's flags.",
    )
    p.add_argument("config", type=Path, help="the pipeline's TOML file")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    run_pipeline(args.config, sys.stderr)
    return 0
