"""``distill train``: fine-tune the student on a checked file, follow the job, print the model it made.

``distill train --file F --model M`` checks F, uploads it, starts the job, follows it to its end and prints the
fine-tuned model's name on stdout (progress goes to stderr). Running the same command again re-attaches to the
job or reports the finished one; ``distill train --status`` lists the recorded jobs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from distill.config import add_config_flag, option, resolve
from distill.errors import AuthenticationError, DistillError, TrainerError, UsageError
from trainers.base import TRAINERS, Trainer, TrainResult, TrainSpec
from trainers.jobs import JobRecord, JobStore

from .train_options import add_together_options, together_extra

# The teacher's settings (distill run) must not leak into the student's fine-tune through the environment.
TEACHER_ENVIRONMENT = ("DISTILL_MODEL", "DISTILL_BASE_URL")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="fine-tune the student on a fine-tuning file",
        description="Check the file, upload it, start the fine-tune, follow it and print the fine-tuned "
        "model's name. The same command again re-attaches instead of starting a second job.",
    )
    add_config_flag(p)
    option(p, "--backend", default="together", help="trainer back-end: together (default) or local")
    option(p, "--file", type=Path, help="the fine-tuning file (JSONL)")
    option(p, "--model", help="base model to fine-tune, e.g. meta-llama/Meta-Llama-3.1-8B-Instruct-Reference")
    option(p, "--validation-file", type=Path, help="held-out file for evaluation during training")
    option(p, "--n-epochs", type=int, default=1, help="passes over the data (default: 1)")
    option(p, "--n-checkpoints", type=int, default=1, help="checkpoints to keep (default: 1)")
    option(
        p,
        "--n-evals",
        type=int,
        default=0,
        help="evaluations on --validation-file (default: 1 with one, else 0)",
    )
    option(p, "--batch-size", default="max", help="an integer or max (default: max)")
    option(p, "--learning-rate", type=float, default=1e-5, help="peak learning rate (default: 1e-5)")
    option(p, "--warmup-ratio", type=float, default=0.0, help="share of steps warming up (default: 0)")
    option(p, "--lora", action="store_true", default=False, help="train a LoRA adapter (the default)")
    option(p, "--full", action="store_true", default=False, help="train every weight instead of LoRA")
    option(p, "--lora-r", type=int, default=8, help="LoRA rank (default: 8)")
    option(p, "--lora-alpha", type=int, help="LoRA alpha (default: twice the rank)")
    option(p, "--lora-dropout", type=float, default=0.0, help="LoRA dropout (default: 0)")
    option(
        p,
        "--train-on-inputs",
        choices=["true", "false", "auto", "boilerplate"],
        default="auto",
        help="which tokens count in the loss: true (all), false (assistant only), auto (by data format); "
        "boilerplate (local only: all but the template's markers)",
    )
    option(p, "--suffix", help="added to the fine-tuned model's name (at most 40 characters)")
    option(
        p, "--wandb-key-env", metavar="NAME", help="variable holding a Weights & Biases key (never stored)"
    )
    add_together_options(p)
    option(p, "--max-seq-length", type=int, default=2048, help="local back-end: longest sequence in tokens")
    option(p, "--output-dir", type=Path, help="local back-end: where the adapter is written")
    option(
        p,
        "--base-url",
        help="Together API base without /v1 (default: TOGETHER_BASE_URL, else https://api.together.ai)",
    )
    option(
        p,
        "--jobs-db",
        type=Path,
        help="the record of uploads and jobs (default: DISTILL_JOBS_DB or ~/.local/state)",
    )
    option(p, "--poll-interval", type=float, default=10.0, help="seconds between status checks (default: 10)")
    option(p, "--quiet", "-q", action="store_true", default=False, help="no progress display")
    p.add_argument("--status", action="store_true", help="list the recorded jobs and exit")
    p.add_argument(
        "--make-tiny-model",
        type=Path,
        metavar="DIR",
        help="build a tiny random Llama with a locally trained tokenizer and chat template in DIR, offline, "
        "and exit (a student to try --backend local on; needs the local extra)",
    )
    p.set_defaults(func=main)


def train_spec(args: argparse.Namespace) -> TrainSpec:
    """The :class:`TrainSpec` the flags describe; a missing or contradictory flag is a :class:`UsageError`."""
    if args.file is None:
        raise UsageError("no fine-tuning file: pass --file FILE (or use --status to list recorded jobs)")
    if not args.file.is_file():
        raise UsageError(f"--file {args.file} does not exist")
    if args.validation_file is not None and not args.validation_file.is_file():
        raise UsageError(f"--validation-file {args.validation_file} does not exist")
    if not args.model:
        raise UsageError(
            "no base model: pass --model NAME (or set model in the [train] table of distill.toml)"
        )
    if args.lora and args.full:
        raise UsageError("--lora and --full contradict each other; pass one")
    for flag, value, low in (
        ("--n-epochs", args.n_epochs, 1),
        ("--n-checkpoints", args.n_checkpoints, 1),
        ("--n-evals", args.n_evals, 0),
        ("--lora-r", args.lora_r, 1),
    ):
        if value < low:
            raise UsageError(f"{flag} must be at least {low}, got {value}")
    return TrainSpec(
        training_file=args.file,
        model=args.model,
        validation_file=args.validation_file,
        n_epochs=args.n_epochs,
        n_checkpoints=args.n_checkpoints,
        batch_size=batch_size(args.batch_size),
        learning_rate=args.learning_rate,
        warmup_ratio=args.warmup_ratio,
        lora=not args.full,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha if args.lora_alpha is not None else 2 * args.lora_r,
        lora_dropout=args.lora_dropout,
        train_on_inputs=args.train_on_inputs,
        suffix=args.suffix,
        wandb_key_env=args.wandb_key_env,
        max_seq_length=args.max_seq_length,
        output_dir=args.output_dir,
        extra={"n_evals": args.n_evals, **together_extra(args)},
    )


def batch_size(value: Any) -> int | str:
    """``--batch-size``: ``max`` or a positive integer."""
    if str(value).strip().lower() == "max":
        return "max"
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"--batch-size takes an integer or max, got {value!r}") from None
    if size < 1:
        raise UsageError(f"--batch-size must be positive, got {size}")
    return size


def make_trainer(args: argparse.Namespace) -> Trainer:
    """The back-end ``--backend`` names, built from the flags when it knows how (``from_cli``)."""
    cls = TRAINERS.get(args.backend)
    from_cli = getattr(cls, "from_cli", None)
    return from_cli(args) if from_cli is not None else cls()


def main(args: argparse.Namespace) -> int:
    environ = {k: v for k, v in os.environ.items() if k not in TEACHER_ENVIRONMENT}
    resolve(args, "train", environ)
    if args.make_tiny_model is not None:
        return make_tiny_model(args.make_tiny_model)
    if args.status:
        print(format_jobs(refreshed_jobs(JobStore(args.jobs_db))))
        return 0
    result = make_trainer(args).train(train_spec(args))
    return report(result)


def make_tiny_model(directory: Path) -> int:
    """``--make-tiny-model DIR``: build the model, say what it is and how to train it (stdout: the folder)."""
    from trainers.local.tiny_model import make_tiny_model as build

    model = build(directory)
    print(
        f"distill train: wrote a tiny Llama ({model.parameters:,} parameters, random weights, a {model.vocab_size}-token "
        f"BPE tokenizer and a Llama-3-like chat template) to {model.path}; train it with "
        f"distill train --backend local --model {model.path} --file FILE",
        file=sys.stderr,
    )
    print(model.path)
    return 0


def report(result: TrainResult) -> int:
    """Print the fine-tuned model (stdout); a job that did not complete is a :class:`TrainerError`."""
    if result.status == "completed" and result.model:
        print(result.model)
        return 0
    why = result.details.get("error") or "no error event"
    raise TrainerError(
        f"job {result.job_id} ended {result.status} ({why}); fix the cause and run the same command again "
        "to start a new job"
    )


def refreshed_jobs(store: JobStore) -> list[JobRecord]:
    """The recorded jobs, with the status of unfinished Together jobs asked afresh when a key is set."""
    from trainers.together import TogetherTrainer
    from trainers.together.client import API_KEY_ENV

    records = store.jobs()
    if not os.environ.get(API_KEY_ENV):
        return records
    fresh: list[JobRecord] = []
    for record in records:
        if record.backend == TogetherTrainer.name and not record.finished:
            trainer = TogetherTrainer(base_url=record.base_url, jobs_path=store.path, quiet=True)
            try:
                record = trainer.refresh(record)
            except AuthenticationError:
                raise
            except DistillError as e:
                print(f"distill train: could not refresh {record.job_id}: {e}", file=sys.stderr)
        fresh.append(record)
    return fresh


def format_jobs(records: list[JobRecord]) -> str:
    """The recorded jobs as an aligned table, newest last."""
    if not records:
        return "no recorded jobs"
    header = ("JOB", "BACKEND", "STATUS", "BASE MODEL", "FINE-TUNED MODEL", "FILE", "STARTED")
    rows = [header] + [
        (
            r.job_id,
            r.backend,
            r.status,
            r.model,
            r.output_model or "-",
            r.training_file,
            time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created_at)),
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )
