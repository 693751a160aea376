"""The pipeline's ``[deploy]`` step: serve the student on a dedicated Together endpoint for its evaluation.

With a ``[deploy]`` table (the flags of ``distill deploy``: ``hardware``, ``min-replicas``, ``max-replicas``,
``inactive-timeout``, ``project``, ``together-url``, ``jobs-db``, ``deploy-poll-interval``), the pipeline
evaluates the base model first (through ``[eval]``'s ``base-url``), then deploys the fine-tuned model, evaluates
it through the endpoint and stops and deletes the endpoint, whatever happens. A pipeline killed while the
endpoint runs leaves a record: the same pipeline run again deletes it before deploying anew.
"""

from __future__ import annotations

from typing import Any, TextIO


def deployed_eval(config: Any, model: str, stream: TextIO) -> tuple[dict[str, Any], dict[str, Any]]:
    """The student's evaluation report through its endpoint, and the endpoint's usage."""
    from distill.cli.deploy import make_deployer
    from distill.cli.eval_deploy import eval_deploy_request
    from trainers.together.serving import serving

    from .pipeline import argv_for, eval_step, parse

    args = parse([*argv_for("deploy", config.tables["deploy"]), "--model", model])
    deployer = make_deployer(args)
    print(f"      deploy {model} on a dedicated endpoint", file=stream)
    with serving(deployer, eval_deploy_request(args, model), owner="pipeline") as (record, usage):
        tuned = eval_step(
            config, str(record.inference_name), "tuned", base_url=deployer.inference_url, deployed=model
        )
    print(f"      {usage.line()}", file=stream)
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
