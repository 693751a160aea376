"""``distill eval``: score a model on CoQA (EM/F1) or BookSum (ROUGE), and compare it with its base model.

    distill eval --task coqa --input coqa-dev.json --model M --base-url URL --report tuned.json --compare base.json

Requests go through the engine with the same cache, rate limits and retries as ``distill run``, so an evaluation
can be stopped, resumed and re-scored without paying again.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from distill.cli.eval_deploy import add_eval_deploy_options, evaluate_deployed, report_failures
from distill.cli.run import add_teacher_options, api_key, teacher_settings
from distill.config import add_config_flag, option, resolve
from distill.errors import UsageError
from trainers import eval as evaluation

# distill run's settings must not leak into an evaluation through the environment: its teacher model is not
# the model under evaluation, and its --history takes other values (teacher|original).
TEACHER_ENVIRONMENT = ("DISTILL_MODEL", "DISTILL_HISTORY")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="score a model on CoQA or BookSum and compare it with its base model",
        description="Ask the model every item of the task (through the cache), score the answers, print the "
        "scores, optionally write a JSON report and compare it with a base model's report.",
    )
    add_config_flag(p)
    option(p, "--task", choices=list(evaluation.TASKS), help="coqa (EM/F1) or booksum (ROUGE-1/2/L)")
    option(p, "--input", type=Path, help="the task's data: CoQA JSON/JSONL, BookSum JSONL, or messages JSONL")
    add_teacher_options(p)
    option(
        p,
        "--history",
        dest="eval_history",
        choices=["gold", "model"],
        default="gold",
        help="CoQA history of each question: the gold answers (default, the CoQA protocol) or the model's own",
    )
    option(
        p,
        "--retry-failed",
        action="store_true",
        default=False,
        help="send again the requests that failed for good on an earlier evaluation",
    )
    option(p, "--limit", type=int, help="evaluate only the first N stories or chapters")
    option(p, "--report", type=Path, help="write the JSON report here")
    option(p, "--compare", type=Path, metavar="BASE_REPORT", help="a base model's report to compare with")
    option(p, "--quiet", "-q", action="store_true", default=False, help="print only the scores")
    add_eval_deploy_options(p)
    p.set_defaults(func=main)


def main(args) -> int:
    environ = {k: v for k, v in os.environ.items() if k not in TEACHER_ENVIRONMENT}
    resolve(args, "eval", environ)
    if not args.task:
        raise UsageError(f"no task: pass --task with one of {', '.join(evaluation.TASKS)}")
    if args.input is None:
        raise UsageError("no evaluation data: pass --input FILE")
    if not args.model:
        raise UsageError("no model to evaluate: pass --model NAME")
    base = evaluation.load_report(args.compare) if args.compare else None
    dialogues = evaluation.load_dialogues(args.task, args.input, args.limit)
    if args.deploy:
        report, deployed_base, predictions = evaluate_deployed(args, dialogues)
        base = deployed_base or base
        if deployed_base is not None and args.report:
            evaluation.write_report(deployed_base, args.report.with_suffix(".base.json"))
    else:
        settings = evaluation.eval_settings(args.task, teacher_settings(args))
        report, predictions = asyncio.run(
            evaluation.evaluate(args.task, dialogues, settings, args.cache, api_key(args), args.eval_history)
        )
    if args.report:
        evaluation.write_report(report, args.report)
    if args.deploy and base is not None:
        print(evaluation.summary_line(base))
    print(evaluation.summary_line(report))
    if base is not None:
        print(evaluation.compare(base, report))
    report_failures(predictions)
    return 1 if predictions.failures else 0
