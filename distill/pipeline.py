"""``distill pipeline CONFIG.toml``: distil -> check -> train -> wait -> evaluate base and student -> report.

The configuration has one table per step, and each table's keys are exactly the flags of that step's command
(``distill run``, ``distill train``, ``distill eval``), so anything a step can do alone it can do here::

    [pipeline]
    dir = "pipeline-out"            # the reports (default: pipeline-out beside the config file)

    [run]                           # distill run's flags; 'input' is its INPUT argument
    input = "coqa-train.json"
    format = "coqa"
    model = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
    base-url = "https://api.together.xyz/v1"
    output = "coqa.messages.jsonl"

    [train]                         # distill train's flags; --file is the run's output
    model = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
    n-epochs = 3
    train-on-inputs = "auto"

    [eval]                          # distill eval's flags, run for the base model and for the student
    task = "coqa"
    input = "coqa-dev.json"
    base-url = "https://api.together.xyz/v1"
    base-model = "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo"   # default: [train] model

    [deploy]                        # optional: distill deploy's flags; the student is evaluated on a dedicated
    hardware = "1xnvidia-h100-80gb" # endpoint, stopped and deleted after (the base model first, via [eval])

Every step is idempotent (the run resumes from its cache, the trainer re-attaches to its recorded job, the
evaluations are cached), so a pipeline that stopped is finished by running it again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import orjson

from .errors import ConfigError, TrainerError, UsageError

STEPS = ("run", "train", "eval")
OPTIONAL_STEPS = ("deploy",)
PIPELINE_KEYS = {"run": {"input"}, "train": set(), "eval": {"base-model"}}


@dataclass(slots=True)
class PipelineConfig:
    path: Path
    directory: Path
    tables: dict[str, dict[str, Any]]


def load_config(path: Path) -> PipelineConfig:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"pipeline config {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"pipeline config {path} is not valid TOML: {e}") from None
    unknown = set(data) - {"pipeline", *STEPS, *OPTIONAL_STEPS}
    if unknown:
        raise ConfigError(
            f"{path}: unknown table(s) {', '.join(sorted(unknown))}; use [pipeline], [run], [train], [eval], "
            "[deploy]"
        )
    for step in STEPS:
        if not isinstance(data.get(step), dict):
            raise ConfigError(f"{path} needs a [{step}] table (the flags of 'distill {step}')")
    directory = Path(data.get("pipeline", {}).get("dir") or path.parent / "pipeline-out")
    tables = {step: data[step] for step in (*STEPS, *OPTIONAL_STEPS) if step in data}
    return PipelineConfig(path, directory, tables)


def argv_for(command: str, table: dict[str, Any], skip: set[str] = frozenset()) -> list[str]:
    """The command line that a table of flag settings stands for."""
    argv = [command]
    for key, value in table.items():
        if key in skip:
            continue
        flag = f"--{key}"
        if value is True:
            argv.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, list):
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]
    return argv


def parse(argv: list[str]):
    from .cli import build_parser
    from .config import resolve

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        raise ConfigError(
            f"the pipeline's [{argv[0]}] table is not valid for 'distill {argv[0]}': {argv[1:]}"
        ) from None
    return resolve(args, argv[0])


def run_step(config: PipelineConfig, stream: TextIO):
    from .cli.run import job_from_args
    from .progress_bar import ProgressBar
    from .runner import run
    from .summary import describe

    table = config.tables["run"]
    if "input" not in table:
        raise ConfigError(f'{config.path}: [run] needs input = "FILE"')
    args = parse([*argv_for("run", table, PIPELINE_KEYS["run"]), str(table["input"])])
    if args.dry_run:
        raise ConfigError(
            f"{config.path}: dry-run in [run] would train on nothing; run 'distill run --dry-run' alone"
        )
    report = run(job_from_args(args), ProgressBar(stream, quiet=args.quiet))
    if not args.quiet:
        print(describe(report), file=stream)
    if report.exit_code:
        raise UsageError(
            f"the run left {report.export.failed} conversations failed; fix the cause and run the pipeline again "
            "(add retry-failed = true to [run] to resend them)"
        )
    return report


def train_step(config: PipelineConfig, training_file: Path, validation_file: Path | None):
    from .cli.train import make_trainer, train_spec

    argv = [*argv_for("train", config.tables["train"]), "--file", str(training_file)]
    if validation_file is not None and "validation-file" not in config.tables["train"]:
        argv += ["--validation-file", str(validation_file)]
    args = parse(argv)
    result = make_trainer(args).train(train_spec(args))
    if result.status != "completed" or not result.model:
        raise TrainerError(f"fine-tune {result.job_id} ended {result.status}: {result.details.get('error')}")
    return result, args.model


def eval_step(
    config: PipelineConfig, model: str, label: str, base_url: str | None = None, deployed: str | None = None
) -> dict[str, Any]:
    """Evaluate ``model`` with the ``[eval]`` flags (at ``base_url`` instead of its base-url when given)."""
    from trainers import eval as evaluation

    from .cli.run import api_key, teacher_settings

    table = dict(config.tables["eval"])
    if base_url is not None:
        table["base-url"] = base_url
    args = parse([*argv_for("eval", table, PIPELINE_KEYS["eval"]), "--model", model])
    settings = evaluation.eval_settings(args.task, teacher_settings(args))
    dialogues = evaluation.load_dialogues(args.task, args.input, args.limit)
    report, predictions = asyncio.run(
        evaluation.evaluate(args.task, dialogues, settings, args.cache, api_key(args), args.eval_history)
    )
    if predictions.failures:
        raise UsageError(
            f"{len(predictions.failures)} evaluation items of {label} model {model} got no answer"
        )
    if deployed is not None:
        report["deployed_model"] = deployed
    evaluation.write_report(report, config.directory / f"eval.{label}.json")
    return report


def run_pipeline(config_path: Path, stream: TextIO) -> dict[str, Any]:
    """Run every step; write ``report.json`` and ``report.md`` into the pipeline's directory and return the JSON.

    The bundled servers the file names (:mod:`distill.servers.bundled`) run for the pipeline's duration."""
    from .servers.bundled import bundled_servers, substituted, wanted

    config = load_config(config_path)
    config.directory.mkdir(parents=True, exist_ok=True)
    with bundled_servers(wanted(config.tables)) as urls:
        config.tables = substituted(config.tables, urls)
        return _run_steps(config, stream)


def _run_steps(config: PipelineConfig, stream: TextIO) -> dict[str, Any]:
    from trainers import eval as evaluation

    print(f"[1/4] distil: {config.tables['run']['input']}", file=stream)
    run_report = run_step(config, stream)
    manifest = orjson.loads(run_report.manifest.read_bytes())
    print(f"[2/4] train on {run_report.export.path} (checked before upload)", file=stream)
    validation = run_report.export.validation_path if run_report.export.validation_written else None
    trained, base_model = train_step(config, run_report.export.path, validation)
    base, tuned, endpoint = evaluate_both(config, trained, base_model, stream)
    comparison = evaluation.compare(base, tuned)
    summary = {
        "dataset": {
            "path": str(run_report.export.path),
            "sha256": manifest["output"]["sha256"],
            "conversations": run_report.export.written,
            "manifest": str(run_report.manifest),
            "teacher": manifest["model"],
        },
        "job": {
            "id": trained.job_id,
            "status": trained.status,
            "base_model": trained_base(config),
            "model": trained.model,
        },
        "eval": {"task": tuned["task"], "base": strip_items(base), "tuned": strip_items(tuned)},
    }
    if endpoint is not None:
        summary["endpoint"] = endpoint
    (config.directory / "report.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    (config.directory / "report.md").write_text(markdown(summary, comparison))
    print(f"[4/4] report: {config.directory / 'report.md'}\n\n{comparison}", file=stream)
    return summary


def evaluate_both(
    config: PipelineConfig, trained: Any, trained_from: str, stream: TextIO
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """The base model's and the student's reports, and the endpoint's usage where [deploy] served the student.

    A student trained here (``backend = "local"``) is a folder no remote server knows: unless [eval] names a
    base-url, it is served here with its base (``distill serve``'s server) and both are evaluated against that;
    with a base-url, that server must list it."""
    base_model = config.tables["eval"].get("base-model", trained_from)
    print(f"[3/4] evaluate the base model {base_model} and the student {trained.model}", file=stream)
    if "deploy" in config.tables:
        base = eval_step(config, base_model, "base")
        return (base, *deployed_eval(config, trained.model, stream))
    if config.tables["train"].get("backend") != "local":
        return eval_step(config, base_model, "base"), eval_step(config, trained.model, "tuned"), None
    if "base-url" in config.tables["eval"]:
        require_served(config.tables["eval"]["base-url"], trained.model)
        return eval_step(config, base_model, "base"), eval_step(config, trained.model, "tuned"), None
    if base_model != trained_from:
        raise ConfigError(
            f"{config.path}: [eval] base-model {base_model!r} is not the model the student was trained from "
            f"({trained_from!r}); drop base-model, or give [eval] a base-url that serves both"
        )
    from trainers.local.server import serving

    if (Path(trained.model) / "adapter_config.json").is_file():
        with serving(trained_from, trained.model) as url:
            print(f"      serving {trained_from} and its adapter {trained.model} at {url}", file=stream)
            base = eval_step(config, base_model, "base", url)
            return base, eval_step(config, trained.model, "tuned", url), None
    with serving(trained_from) as url:
        base = eval_step(config, base_model, "base", url)
    with serving(trained.model) as url:
        return base, eval_step(config, trained.model, "tuned", url), None


def require_served(base_url: str, model: str) -> None:
    """A TrainerError unless the server at ``base_url`` lists ``model`` (where it lists its models at all)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{base_url.rstrip('/')}/models", timeout=10) as response:
            listed = [m.get("id") for m in orjson.loads(response.read()).get("data", [])]
    except (OSError, ValueError, AttributeError):
        return  # no model list to check against: the evaluation itself will say what is wrong
    if model not in listed:
        raise TrainerError(
            f"cannot evaluate the student: the [eval] server {base_url} does not serve {model} (it lists "
            f"{', '.join(map(str, listed)) or 'nothing'}); drop base-url from [eval] so the pipeline serves the "
            "local model itself, or serve it there with: distill serve --model BASE --adapter " + model
        )


def trained_base(config: PipelineConfig) -> str:
    return str(config.tables["train"].get("model", ""))


def strip_items(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k not in ("items", "endpoint", "evaluation_key")}


def markdown(summary: dict[str, Any], comparison: str) -> str:
    d, j, e = summary["dataset"], summary["job"], summary["eval"]
    return "\n".join(
        [
            "# distill pipeline report",
            "",
            f"- dataset: `{d['path']}` ({d['conversations']} conversations, teacher `{d['teacher']}`), "
            f"sha256 `{d['sha256']}`",
            f"- fine-tune: job `{j['id']}` ({j['status']}), `{j['base_model']}` -> `{j['model']}`",
            f"- evaluation: {e['task']}, base `{e['base']['model']}` vs student `{e['tuned']['model']}`"
            + (f" (serving `{e['tuned']['deployed_model']}`)" if e["tuned"].get("deployed_model") else ""),
            *endpoint_line(summary.get("endpoint")),
            "",
            "```",
            comparison,
            "```",
            "",
        ]
    )


# The [deploy] step: serve the student on a dedicated Together endpoint for its evaluation.


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
