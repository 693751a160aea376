"""``distill train`` flags for the Together options of the 3.x SDK: checkpoints, early stopping, a price cap."""

from __future__ import annotations

import argparse
from typing import Any

from distill.config import option
from distill.errors import UsageError


def add_together_options(p: argparse.ArgumentParser) -> None:
    option(
        p,
        "--from-checkpoint",
        metavar="JOB[:STEP]",
        help="together: continue from a job's (or model's) checkpoint",
    )
    option(
        p,
        "--early-stopping-patience",
        type=int,
        metavar="N",
        help="together: stop after N evaluations without improvement (needs --validation-file and --n-evals)",
    )
    option(
        p, "--early-stopping-min-delta", type=float, help="together: the loss drop that counts as improvement"
    )
    option(p, "--early-stopping-warmup-evals", type=int, help="together: evaluations before patience counts")
    option(
        p,
        "--budget",
        type=float,
        metavar="USD",
        help="together: refuse a job that Together estimates above this price (exit 75)",
    )


def together_extra(args: argparse.Namespace) -> dict[str, Any]:
    """The flags above as :attr:`TrainSpec.extra` entries (absent when not given)."""
    if args.early_stopping_patience is not None and args.early_stopping_patience < 1:
        raise UsageError(f"--early-stopping-patience must be at least 1, got {args.early_stopping_patience}")
    if args.budget is not None and args.budget <= 0:
        raise UsageError(f"--budget must be positive, got {args.budget:g}")
    values = {
        "from_checkpoint": args.from_checkpoint,
        "early_stopping_patience": args.early_stopping_patience,
        "early_stopping_min_delta": args.early_stopping_min_delta,
        "early_stopping_warmup_evals": args.early_stopping_warmup_evals,
        "budget": args.budget,
    }
    return {k: v for k, v in values.items() if v is not None}
