"""``distill demo``: the whole product end to end on this machine, with no key and no network.

1. Starts the bundled local teacher on 127.0.0.1 and distils the bundled ShareGPT sample through it into both
   fine-tuning formats, then shows that the second format cost no request (it came from the cache).
2. Starts the bundled fake of Together's files and fine-tuning API and runs ``distill pipeline`` on the Together
   cookbook's CoQA recipe: CoQA stories -> multi-turn messages -> file check -> LoRA fine-tune with
   ``train_on_inputs=auto`` -> wait -> deploy the student on a dedicated endpoint -> EM/F1 of the base model and
   the student -> stop and delete the endpoint -> report.

The local teacher answers every model name with the same canned, deterministic text, so the demo's scores show
the machinery working, not a real student's quality.
"""

from __future__ import annotations

import argparse
import sys
from importlib.resources import files
from pathlib import Path

from distill.pipeline import run_pipeline
from distill.progress_bar import ProgressBar
from distill.runner import RunJob, run
from distill.servers import bundled
from distill.servers.teacher import start_teacher_process
from distill.settings import RunSettings
from distill.summary import describe


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the whole job offline against the bundled local servers",
        description=__doc__.splitlines()[0],
    )
    p.add_argument(
        "--dir", type=Path, default=Path("distill-demo"), help="where to write (default: ./distill-demo)"
    )
    p.set_defaults(func=main)


def data_path(name: str) -> Path:
    return Path(str(files("distill") / "data" / name))


def distil_sample(directory: Path, base_url: str) -> int:
    sample = data_path("sample_sharegpt.json")
    settings = RunSettings(model="local-teacher", base_url=base_url, concurrency=8, rpm=3000)
    for output_format in ("messages", "llama2"):
        output = directory / f"sample.{output_format}.jsonl"
        print(f"\n$ distill run {sample.name} --output-format {output_format} --rpm 3000", file=sys.stderr)
        report = run(
            RunJob(sample, output, directory / "cache.sqlite", settings, output_format=output_format),
            ProgressBar(sys.stderr),
        )
        print(describe(report), file=sys.stderr)
        if report.exit_code:
            return report.exit_code
    return 0


def pipeline_config(
    directory: Path, teacher_url: str = bundled.TEACHER, together_root: str = bundled.TOGETHER
) -> Path:
    """Write the demo's ``pipeline.toml``; by default it starts its own servers (:mod:`distill.servers.bundled`)."""
    config = directory / "pipeline.toml"
    config.write_text(f"""# The Together cookbook's CoQA recipe, pointed at the local teacher and the local Together fake.
# "bundled:teacher" and "bundled:together" start them for the pipeline's duration: run this file again with
# distill pipeline {directory / "pipeline.toml"}
[pipeline]
dir = "{directory / "pipeline"}"

[run]
input = "{data_path("coqa_train_sample.json")}"
format = "coqa"
model = "local-teacher"
base-url = "{teacher_url}"
cache = "{directory / "cache.sqlite"}"
output = "{directory / "coqa.messages.jsonl"}"
quiet = true

[train]
backend = "together"
base-url = "{together_root}"
model = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
n-epochs = 3
lora = true
train-on-inputs = "auto"
suffix = "coqa-demo"
poll-interval = 0.2
jobs-db = "{directory / "jobs.sqlite3"}"

[eval]
task = "coqa"
input = "{data_path("coqa_dev_sample.json")}"
base-url = "{teacher_url}"
cache = "{directory / "eval-cache.sqlite"}"
base-model = "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo"

[deploy]
together-url = "{together_root}"
project = "demo-project"
hardware = "1xnvidia-h100-80gb"
min-replicas = 1
inactive-timeout = 30
deploy-poll-interval = 0.2
jobs-db = "{directory / "jobs.sqlite3"}"
""")
    return config


def main(args: argparse.Namespace) -> int:
    directory = args.dir.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    print(f"starting the local teacher; writing into {directory}/", file=sys.stderr)
    with start_teacher_process(bundled.teacher_knobs()) as teacher:
        status = distil_sample(directory, teacher.base_url)
        if status:
            return status
        received = teacher.stats(with_hashes=False)["requests"]
        print(
            f"\nthe teacher received {received} requests for both files: the second came from the cache",
            file=sys.stderr,
        )
    config = pipeline_config(directory)
    print(
        f"\n$ distill pipeline {config} (starts the local teacher and the fake Together API)", file=sys.stderr
    )
    run_pipeline(config, sys.stderr)
    print(
        f"\nnext: distill check {directory}/sample.messages.jsonl; distill stats --cache {directory}/cache.sqlite",
        file=sys.stderr,
    )
    return 0
