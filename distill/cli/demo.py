"""``distill demo``: the main job end to end on this machine, with no key and no network.

Starts the bundled local teacher on 127.0.0.1, distils the bundled ShareGPT sample through it into both
fine-tuning formats, then runs the same command again to show that a finished run costs nothing.
"""

from __future__ import annotations

import argparse
import sys
from importlib.resources import files
from pathlib import Path

from distill.runner import RunJob, run
from distill.settings import RunSettings
from distill.teacher_server import TeacherKnobs, start_teacher_process


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the whole job offline against the bundled local teacher",
        description=__doc__.splitlines()[0],
    )
    p.add_argument(
        "--dir", type=Path, default=Path("distill-demo"), help="where to write (default: ./distill-demo)"
    )
    p.set_defaults(func=main)


def sample_path() -> Path:
    return Path(str(files("distill") / "data" / "sample_sharegpt.json"))


def main(args: argparse.Namespace) -> int:
    args.dir.mkdir(parents=True, exist_ok=True)
    cache = args.dir / "cache.sqlite"
    print(f"starting the local teacher; distilling {sample_path().name} into {args.dir}/", file=sys.stderr)
    with start_teacher_process(TeacherKnobs(latency=0.02, answer_words=20)) as teacher:
        settings = RunSettings(model="local-teacher", base_url=teacher.base_url, concurrency=8, rpm=3000)
        for output_format in ("messages", "llama2"):
            output = args.dir / f"sample.{output_format}.jsonl"
            print(
                f"\n$ distill run {sample_path().name} --output-format {output_format} --rpm 3000",
                file=sys.stderr,
            )
            report = run(RunJob(sample_path(), output, cache, settings, output_format=output_format))
            if report.exit_code:
                return report.exit_code
        received = teacher.stats(with_hashes=False)["requests"]
    print(
        f"\nthe teacher received {received} requests for both files: the second format came from the cache",
        file=sys.stderr,
    )
    print(
        f"next: distill check {args.dir}/sample.messages.jsonl; distill stats --cache {cache}",
        file=sys.stderr,
    )
    return 0
