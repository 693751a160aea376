"""``distill eval --deploy``: evaluate the base model, then deploy the fine-tuned one, evaluate it, tear it down.

The base model (``--base-model``, optional) is asked through ``--base-url`` before anything is deployed, so the
endpoint runs only while the fine-tuned model is evaluated. The endpoint is stopped and deleted however the
evaluation ends (done, error, Ctrl-C, SIGTERM); after a ``kill -9`` the next ``distill eval --deploy`` or
``distill deploy --cleanup`` deletes it. The endpoint's minutes and their estimated cost are printed and stored
in the report (``endpoint``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from copy import copy
from typing import Any

from distill.cli.deploy import deploy_request, make_deployer
from distill.cli.run import api_key, teacher_settings
from trainers import eval as evaluation


def add_eval_deploy_options(p: argparse.ArgumentParser) -> None:
    from distill.cli.deploy import add_deploy_options
    from distill.config import option

    option(
        p,
        "--deploy",
        action="store_true",
        default=False,
        help="serve --model on a dedicated Together endpoint for the evaluation, then stop and delete it",
    )
    option(p, "--base-model", help="with --deploy: also evaluate this model through --base-url, and compare")
    add_deploy_options(p)


def ask(args: argparse.Namespace, dialogues: list[Any], model: str, base_url: str) -> tuple[dict, Any]:
    """Evaluate ``model`` at ``base_url`` with the flags' settings (through the engine and its cache)."""
    asked = copy(args)
    asked.model, asked.base_url = model, base_url
    settings = evaluation.eval_settings(args.task, teacher_settings(asked))
    return asyncio.run(
        evaluation.evaluate(args.task, dialogues, settings, args.cache, api_key(args), args.eval_history)
    )


def evaluate_deployed(args: argparse.Namespace, dialogues: list[Any]) -> tuple[dict, dict | None, Any]:
    """The fine-tuned model's report (with its ``endpoint`` usage), the base model's report, the predictions."""
    from trainers.together.serving import serving

    base = None
    if args.base_model:
        if not args.base_url:
            raise_usage(
                "--base-model needs --base-url: where the base model is served (e.g. serverless Together)"
            )
        base, failed = ask(args, dialogues, args.base_model, args.base_url)
        report_failures(failed)
    deployer = make_deployer(args, quiet=args.quiet)
    with serving(deployer, eval_deploy_request(args, args.model)) as (record, usage):
        tuned, predictions = ask(args, dialogues, str(record.inference_name), deployer.inference_url)
    tuned["deployed_model"] = args.model
    tuned["endpoint"] = usage.to_dict()
    print(usage.line(), file=sys.stderr)
    return tuned, base, predictions


def eval_deploy_request(args: argparse.Namespace, model: str) -> Any:
    """The deployment for evaluating ``model``: always the same endpoint name, so a rerun reuses its cache."""
    from dataclasses import replace

    from trainers.together.deploy import eval_endpoint_name

    return replace(deploy_request(args, model), name=eval_endpoint_name(model))


def raise_usage(message: str) -> None:
    from distill.errors import UsageError

    raise UsageError(message)


def report_failures(predictions: Any) -> None:
    if predictions.failures:
        for item_id, reason in sorted(predictions.failures.items())[:10]:
            print(f"distill eval: {item_id}: no answer: {reason}", file=sys.stderr)
        print(
            f"distill eval: {len(predictions.failures)} items had no answer and were not scored; fix the cause "
            "and run again with --retry-failed",
            file=sys.stderr,
        )
