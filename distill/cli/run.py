"""``distill run``: answer every conversation of a dataset with the teacher and write a fine-tuning file."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from distill.batch import BatchOptions
from distill.cli.cluster_options import add_cluster_options, cluster_from_args
from distill.config import add_config_flag, option, resolve
from distill.cost import BUDGET_SCOPES, resolve_price
from distill.dry_run import dry_run
from distill.errors import DistillError, UsageError
from distill.progress_bar import ProgressBar
from distill.rejected import DEFAULT_MAX_REJECT_SHARE
from distill.runner import Interrupted, RunJob, run
from distill.settings import RunSettings, Sampling
from distill.shard import Shard
from distill.summary import describe, describe_interrupted

DEFAULT_CACHE = Path("distill-cache.sqlite")
DEFAULT_KEY_ENV = "TOGETHER_API_KEY"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "run",
        help="distil a dataset through a teacher model",
        description="Answer every user turn of INPUT with the teacher (cached, rate-limited, resumable) and "
        "write a fine-tuning file.",
    )
    p.add_argument("input", type=Path, help="conversations: ShareGPT JSON/JSONL, messages JSONL, ...")
    add_config_flag(p)
    add_teacher_options(p)
    option(
        p,
        "--output",
        "-o",
        type=file_path,
        help="fine-tuning file to write (default: INPUT_STEM.FORMAT.jsonl)",
    )
    option(p, "--output-format", default="messages", help="messages | llama2 | ... (default: messages)")
    option(p, "--format", dest="input_format", help="input format (default: detected from the file)")
    option(
        p, "--reader-opt", action="append", metavar="KEY=VALUE", help="reader-specific setting, repeatable"
    )
    option(
        p,
        "--history",
        choices=["teacher", "original"],
        default="teacher",
        help="history of each request: the teacher's own answers (default) or the dataset's",
    )
    option(p, "--system-prompt", help="system prompt for every conversation (replaces the dataset's)")
    option(p, "--limit", type=int, help="stop after N conversations")
    option(
        p,
        "--val-fraction",
        type=float,
        default=0.0,
        help="share of conversations (by a stable hash of their id) written to OUTPUT_STEM.val.jsonl instead",
    )
    option(
        p,
        "--retry-failed",
        action="store_true",
        default=False,
        help="send again the requests that failed for good on an earlier run",
    )
    option(
        p,
        "--max-reject-share",
        type=float,
        default=DEFAULT_MAX_REJECT_SHARE,
        help="share of input records that may be rejected before the run fails (default: "
        f"{DEFAULT_MAX_REJECT_SHARE:g}; any reject is a warning)",
    )
    option(
        p,
        "--skip-preflight",
        action="store_true",
        default=False,
        help="do not ask GET BASE/models before the first request (for servers without it)",
    )
    option(
        p,
        "--quiet",
        "-q",
        action="store_true",
        default=False,
        help="no progress display or summary; warnings only",
    )
    add_scale_options(p)
    add_cluster_options(p)
    p.set_defaults(func=main)


def add_scale_options(p: argparse.ArgumentParser) -> None:
    """Flags for cost, budget, Batch APIs and sharding (see distill.cost, distill.batch, distill.shard)."""
    option(
        p,
        "--dry-run",
        action="store_true",
        default=False,
        help="count conversations, turns and tokens (history included) and print the cost; send nothing",
    )
    option(
        p, "--price-in", type=float, help="US dollars per million prompt tokens (default: dated list price)"
    )
    option(
        p, "--price-out", type=float, help="US dollars per million output tokens (default: dated list price)"
    )
    option(
        p,
        "--expected-output-tokens",
        type=int,
        default=512,
        help="tokens a teacher answer is expected to have, for --dry-run (default: 512, capped by --max-tokens)",
    )
    option(
        p,
        "--budget",
        type=float,
        metavar="USD",
        help="stop sending once everything spent on this cache for these settings reaches this much "
        "(resumable with a higher --budget; exit code 75)",
    )
    option(
        p,
        "--budget-scope",
        choices=list(BUDGET_SCOPES),
        default="total",
        help="total: --budget covers every invocation on these settings (default); run: this invocation alone",
    )
    option(
        p,
        "--batch",
        nargs="?",
        const="auto",
        choices=["auto", "together", "openai"],
        help="use the provider's Batch API (half price, up to 24 h): together or openai (default: from --base-url)",
    )
    option(
        p, "--batch-poll", type=float, default=30.0, help="seconds between batch status checks (default: 30)"
    )
    option(
        p, "--shard", metavar="I/N", help="answer only shard I of N (by conversation id); own --cache each"
    )


def add_teacher_options(p: argparse.ArgumentParser) -> None:
    """Flags that say which teacher to ask and how hard to push it (shared with ``distill eval``)."""
    option(p, "--model", "-m", help="teacher model name, as the server knows it")
    option(
        p,
        "--base-url",
        help="OpenAI-style API base, e.g. https://api.together.xyz/v1 or http://127.0.0.1:8000/v1",
    )
    option(p, "--api", choices=["chat", "completions"], default="chat", help="teacher API (default: chat)")
    option(
        p,
        "--api-key-env",
        default=DEFAULT_KEY_ENV,
        help=f"variable holding the API key (default: {DEFAULT_KEY_ENV})",
    )
    option(
        p, "--cache", type=Path, default=DEFAULT_CACHE, help=f"SQLite cache file (default: {DEFAULT_CACHE})"
    )
    option(p, "--concurrency", type=int, default=64, help="requests in flight at most (default: 64)")
    option(p, "--rpm", type=float, help="requests per minute the provider allows")
    option(p, "--tpm", type=float, help="tokens per minute the provider allows")
    option(p, "--request-timeout", type=float, default=600.0, help="seconds before a request is abandoned")
    option(p, "--attempts", type=int, default=6, help="tries per request, first included (default: 6)")
    option(p, "--max-tokens", type=int, help="sampling: max_tokens")
    option(p, "--temperature", type=float, help="sampling: temperature")
    option(p, "--top-p", type=float, help="sampling: top_p")
    option(p, "--top-k", type=int, help="sampling: top_k")
    option(p, "--repetition-penalty", type=float, help="sampling: repetition_penalty")
    option(p, "--stop", action="append", help="sampling: stop sequence, repeatable")
    option(p, "--seed", type=int, help="sampling: seed")


def teacher_settings(args: argparse.Namespace) -> RunSettings:
    if not args.model:
        raise UsageError("no teacher model: pass --model (or set model in distill.toml, or DISTILL_MODEL)")
    if not args.base_url:
        raise UsageError(
            "no teacher URL: pass --base-url, e.g. https://api.together.xyz/v1 (or set DISTILL_BASE_URL)"
        )
    if args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    if args.attempts < 1:
        raise UsageError("--attempts must be at least 1")
    for flag, value in (
        ("--rpm", args.rpm),
        ("--tpm", args.tpm),
        ("--request-timeout", args.request_timeout),
    ):
        if value is not None and value <= 0:
            raise UsageError(f"{flag} must be positive, got {value:g}")
    return RunSettings(
        model=args.model,
        base_url=args.base_url,
        api=args.api,
        history=getattr(args, "history", None) or "teacher",
        sampling=Sampling(
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            repetition_penalty=args.repetition_penalty,
            stop=args.stop,
            seed=args.seed,
        ),
        system_prompt=getattr(args, "system_prompt", None),
        concurrency=args.concurrency,
        rpm=args.rpm,
        tpm=args.tpm,
        request_timeout=args.request_timeout,
        attempts=args.attempts,
        retry_failed=bool(getattr(args, "retry_failed", False)),
    )


def file_path(value: str) -> Path:
    """A file path flag: a path ending in a slash names a directory, which is refused at once."""
    if value.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(
            f"{value} is a directory path; pass a file path such as {value}out.jsonl"
        )
    return Path(value)


def api_key(args: argparse.Namespace) -> str | None:
    """The key from the variable ``--api-key-env`` names; a local server may need none."""
    key = os.environ.get(args.api_key_env)
    if key is None and args.api_key_env != DEFAULT_KEY_ENV:
        raise UsageError(f"--api-key-env names {args.api_key_env}, but that variable is not set")
    return key


def reader_options(pairs: list[str] | None) -> dict[str, str]:
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--reader-opt takes KEY=VALUE, got {pair!r}")
        options[key] = value
    return options


def main(args: argparse.Namespace) -> int:
    resolve(args, "run")
    job = job_from_args(args)
    if args.dry_run:
        dry_run(job, job.price, sys.stdout)
        return 0
    try:
        report = run(job, ProgressBar(sys.stderr, quiet=args.quiet))
    except Interrupted as stopped:
        if stopped.stats is not None and not args.quiet:
            print(describe_interrupted(stopped.stats, job.cache, resume_command()), file=sys.stderr)
        raise
    except DistillError as error:
        if getattr(error, "report", None) is not None and not args.quiet:
            print(describe(error.report), file=sys.stderr)  # what was written, before the error's own line
        raise
    if not args.quiet:
        print(describe(report), file=sys.stderr)
    if report.exit_code and not args.quiet:
        print(
            f"{len(report.stats.failures)} conversations failed; the same command again retries those that ran "
            "out of attempts (429, 5xx, timeouts); add --retry-failed to also resend requests the server refused",
            file=sys.stderr,
        )
    return report.exit_code


def resume_command() -> str:
    """The command line that resumes this run: the same one."""
    return shlex.join(["distill", *sys.argv[1:]])


def job_from_args(args: argparse.Namespace) -> RunJob:
    """The :class:`RunJob` that resolved ``distill run`` flags describe (also used by ``distill pipeline``)."""
    if args.dry_run and not args.base_url:
        args.base_url = "(dry run: no server)"
    settings = teacher_settings(args)
    if args.expected_output_tokens < 1:
        raise UsageError("--expected-output-tokens must be at least 1")
    settings.estimated_output_tokens = args.expected_output_tokens
    output = args.output or Path(f"{args.input.stem}.{args.output_format.partition(':')[0]}.jsonl")
    return RunJob(
        input=args.input,
        output=output,
        cache=args.cache,
        settings=settings,
        output_format=args.output_format,
        input_format=args.input_format,
        reader_options=reader_options(args.reader_opt),
        limit=args.limit,
        val_fraction=args.val_fraction,
        api_key=None if args.dry_run else api_key(args),
        api_key_env=args.api_key_env,
        shard=Shard.parse(args.shard) if args.shard else None,
        budget=args.budget,
        budget_scope=args.budget_scope,
        max_reject_share=args.max_reject_share,
        preflight=not args.skip_preflight,
        price=resolve_price(settings.model, args.price_in, args.price_out),
        batch=BatchOptions(
            provider="auto" if args.batch is True else args.batch, poll_seconds=args.batch_poll
        )
        if args.batch
        else None,
        cluster=cluster_from_args(args),
    )
