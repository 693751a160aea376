"""The pipeline's ``[deploy]`` step: serve the student on a dedicated Together endpoint for its evaluation.

With a ``[deploy]`` table (the flags of ``distill deploy``: ``hardware``, ``min-replicas``, ``max-replicas``,
``inactive-timeout``, ``project``, ``together-url``, ``jobs-db``, ``deploy-poll-interval``), the pipeline
evaluates the base model first (through ``[eval]``'s ``base-url``), then deploys the fine-tuned model, evaluates
it through the endpoint and stops and deletes the endpoint, whatever happens. A pipeline killed while the
endpoint runs leaves a record: the same pipeline run again deletes it before deploying anew.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, TextIO


def evaluation_key(config: Any, model: str) -> str:
    """What decides the student's scores: the ``[eval]`` table and the model (not the endpoint it ran on)."""
    identity = json.dumps({"eval": config.tables["eval"], "model": model}, sort_keys=True, default=str)
    return hashlib.sha256(identity.encode()).hexdigest()


def finished_before(config: Any, model: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The report and endpoint usage of an earlier run that evaluated the same model the same way: a rerun of a
    finished pipeline deploys nothing (an endpoint bills from the minute it starts)."""
    path = config.directory / "eval.tuned.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if report.get("evaluation_key") != evaluation_key(config, model) or "endpoint" not in report:
        return None
    return report, report["endpoint"]


def deployed_eval(config: Any, model: str, stream: TextIO) -> tuple[dict[str, Any], dict[str, Any]]:
    """The student's evaluation report through its endpoint, and the endpoint's usage."""
    from distill.cli.deploy import make_deployer
    from distill.cli.eval_deploy import eval_deploy_request
    from trainers import eval as evaluation
    from trainers.together.serving import serving

    from .pipeline import argv_for, eval_step, parse

    earlier = finished_before(config, model)
    if earlier is not None:
        print(f"      {model} was already evaluated on an endpoint (nothing deployed)", file=stream)
        return earlier
    args = parse([*argv_for("deploy", config.tables["deploy"]), "--model", model])
    deployer = make_deployer(args)
    print(f"      deploy {model} on a dedicated endpoint", file=stream)
    with serving(deployer, eval_deploy_request(args, model), owner="pipeline") as (record, usage):
        tuned = eval_step(
            config, str(record.inference_name), "tuned", base_url=deployer.inference_url, deployed=model
        )
    print(f"      {usage.line()}", file=stream)
    tuned.update(endpoint=usage.to_dict(), evaluation_key=evaluation_key(config, model))
    evaluation.write_report(tuned, config.directory / "eval.tuned.json")
    return tuned, usage.to_dict()


def endpoint_line(endpoint: dict[str, Any] | None) -> list[str]:
    """The report's line about the endpoint, when there was one."""
    if not endpoint:
        return []
    return [
        f"- endpoint: `{endpoint['name']}` on {endpoint['hardware']}, {endpoint['minutes']:.2f} min "
        f"({endpoint['billed_replica_minutes']} replica-minutes billed, estimated "
        f"${endpoint['estimated_cost_usd']:.2f}); stopped and deleted"
    ]
