"""``distill deploy``: serve a fine-tuned model on a dedicated Together endpoint, and take it down again.

    distill deploy [--model M] [--hardware H] [--min-replicas N] [--max-replicas N] [--inactive-timeout MIN]
    distill deploy --list-hardware [--model M]
    distill deploy --status | --stop NAME | --delete NAME | --cleanup

Without ``--model`` it deploys the newest completed fine-tune recorded by ``distill train``. It waits until the
endpoint serves and prints the name to send as ``model`` (stdout). Endpoints bill by the minute while they run,
even idle: ``--stop`` ends that, ``--delete`` removes the endpoint, ``--cleanup`` stops and deletes every
endpoint distill recorded that is still there.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from distill.config import add_config_flag, option, resolve
from distill.errors import UsageError


def add_deploy_options(p: argparse.ArgumentParser) -> None:
    """The flags that say where and how to deploy (shared with ``distill eval --deploy``)."""
    option(
        p, "--hardware", help="hardware to run on, e.g. 1xnvidia-h100-80gb (default: the cheapest offered)"
    )
    option(p, "--min-replicas", type=int, default=1, help="replicas always running (default: 1)")
    option(p, "--max-replicas", type=int, help="replicas at most under load (default: --min-replicas)")
    option(
        p,
        "--inactive-timeout",
        type=int,
        help="minutes without a request before Together stops the endpoint (0: never, else 30-1440)",
    )
    option(p, "--project", help="Together project id (default: TOGETHER_PROJECT_ID)")
    option(
        p,
        "--together-url",
        help="Together API base without /v1 (default: TOGETHER_BASE_URL, else https://api.together.ai)",
    )
    option(
        p,
        "--jobs-db",
        type=Path,
        help="the record of jobs and endpoints (default: DISTILL_JOBS_DB or ~/.local/state)",
    )
    option(
        p,
        "--deploy-poll-interval",
        type=float,
        default=10.0,
        help="seconds between state checks (default: 10)",
    )


def make_deployer(args: argparse.Namespace, *, quiet: bool = False):
    from trainers.together.deploy import Deployer

    return Deployer(
        base_url=args.together_url,
        project_id=args.project,
        jobs_path=args.jobs_db,
        poll_interval=args.deploy_poll_interval,
        quiet=quiet,
    )


def deploy_request(args: argparse.Namespace, model: str):
    from trainers.together.deploy import DeployRequest

    high = args.max_replicas if args.max_replicas is not None else args.min_replicas
    return DeployRequest(
        model=model,
        hardware=args.hardware,
        min_replicas=args.min_replicas,
        max_replicas=high,
        inactive_timeout=args.inactive_timeout,
    )


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "deploy",
        help="serve a fine-tuned model on a dedicated Together endpoint; stop, delete, list, clean up",
        description=__doc__.split("\n\n")[0],
    )
    add_config_flag(p)
    option(p, "--model", help="the model to deploy (default: the newest completed fine-tune recorded)")
    add_deploy_options(p)
    option(p, "--quiet", "-q", action="store_true", default=False, help="no progress display")
    actions = p.add_mutually_exclusive_group()
    actions.add_argument(
        "--list-hardware", action="store_true", help="list the hardware the model can run on"
    )
    actions.add_argument("--status", action="store_true", help="list the recorded endpoints and their state")
    actions.add_argument("--stop", metavar="NAME", help="stop a recorded endpoint (it stops billing)")
    actions.add_argument("--delete", metavar="NAME", help="stop and delete a recorded endpoint")
    actions.add_argument(
        "--cleanup", action="store_true", help="stop and delete every endpoint still recorded"
    )
    p.set_defaults(func=main)


def latest_model(args: argparse.Namespace) -> str:
    from trainers.jobs import JobStore

    done = [r for r in JobStore(args.jobs_db).jobs() if r.status == "completed" and r.output_model]
    if not done:
        raise UsageError("no completed fine-tune is recorded: pass --model NAME (or run distill train first)")
    return str(done[-1].output_model)


def main(args: argparse.Namespace) -> int:
    resolve(args, "deploy")
    deployer = make_deployer(args, quiet=args.quiet)
    if args.status:
        print(format_status(deployer))
        return 0
    if args.cleanup:
        done = deployer.cleanup(orphans_only=False)
        print(f"{len(done)} endpoint(s) stopped and deleted" if done else "no endpoint left to clean up")
        return 0
    if args.stop or args.delete:
        record = deployer.store.find(args.stop or args.delete)
        if record is None:
            raise UsageError(
                f"no live endpoint named {args.stop or args.delete} is recorded; see distill deploy --status"
            )
        if args.stop:
            deployer.stop(record)
            print(f"stopped {record.inference_name or record.name} (delete it with --delete {record.name})")
        else:
            deployer.teardown(record)
        return 0
    model = args.model or latest_model(args)
    if args.list_hardware:
        for choice in deployer.hardware(model).options:
            print(f"{choice.hardware:24}  {choice.label:20}  {choice.price}")
        return 0
    deployer.cleanup(orphans_only=True)
    record = deployer.deploy(deploy_request(args, model))
    deployer.say(f"it bills by the minute until stopped: distill deploy --delete {record.name}")
    print(record.inference_name)
    return 0


def format_status(deployer) -> str:
    records = deployer.store.records()
    if not records:
        return "no recorded endpoints"
    now = time.time()
    rows = [("ENDPOINT", "MODEL", "HARDWARE", "STATE", "MINUTES", "COST")]
    for r in records:
        state = "deleted" if not r.alive else deployer.state(r).removeprefix("DEPLOYMENT_STATE_").lower()
        rows.append(
            (
                r.inference_name or r.name,
                r.model,
                r.hardware,
                state,
                f"{r.minutes(now):.1f}",
                f"${r.cost(now):.2f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)
