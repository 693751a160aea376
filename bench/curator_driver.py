"""Run Bespoke Curator's online OpenAI backend over a messages JSONL file (runs in Curator's own virtualenv).

Not part of distill: :mod:`bench.curator` starts this with the interpreter of a separate virtualenv where
``bespokelabs-curator`` is installed, so that Curator's dependencies never enter distill's. It imports nothing
from distill. Every user turn of the input becomes one Curator prompt. A ``-`` for RPM, TPM, CONCURRENCY or
RETRIES leaves that backend parameter unset, so that Curator uses its own default (what a new user runs). The
number of rows in Curator's dataset is written to ``WORKDIR/answered.json``; ``require_all_responses`` is off so
that a run with failed prompts ends with that count instead of an exception.

    CURATOR_PYTHON bench/curator_driver.py INPUT BASE_URL MODEL WORKDIR RPM TPM CONCURRENCY RETRIES
"""

from __future__ import annotations

import json
import os
import sys


def main(argv: list[str]) -> int:
    source, base_url, model, workdir, rpm, tpm, concurrency, retries = argv
    from bespokelabs import curator

    prompts = []
    with open(source, encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            prompts.append({"prompt": record["messages"][-1]["content"]})
    params = {"base_url": base_url, "api_key": "local", "require_all_responses": False}
    given = {
        "max_requests_per_minute": rpm,
        "max_tokens_per_minute": tpm,
        "max_concurrent_requests": concurrency,
        "max_retries": retries,
    }
    params.update({key: int(value) for key, value in given.items() if value != "-"})

    class Teacher(curator.LLM):
        def prompt(self, input: dict) -> str:
            return input["prompt"]

    llm = Teacher(model_name=model, backend="openai", backend_params=params)
    result = llm(prompts, working_dir=workdir)
    answered = len(result.dataset) if hasattr(result, "dataset") else len(result)
    with open(os.path.join(workdir, "answered.json"), "w", encoding="utf-8") as out:
        json.dump({"answered": answered}, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
