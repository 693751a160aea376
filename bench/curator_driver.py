"""Run Bespoke Curator's online OpenAI backend over a messages JSONL file (runs in Curator's own virtualenv).

Not part of distill: :mod:`bench.curator` starts this with the interpreter of a separate virtualenv where
``bespokelabs-curator`` is installed, so that Curator's dependencies never enter distill's. It imports nothing
from distill. Every user turn of the input becomes one Curator prompt.

    CURATOR_PYTHON bench/curator_driver.py INPUT BASE_URL MODEL WORKDIR RPM TPM CONCURRENCY
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    source, base_url, model, workdir, rpm, tpm, concurrency = argv
    from bespokelabs import curator

    prompts = []
    with open(source, encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            prompts.append({"prompt": record["messages"][-1]["content"]})
    params = {
        "base_url": base_url,
        "api_key": "local",
        "max_requests_per_minute": int(rpm),
        "max_tokens_per_minute": int(tpm),
        "max_concurrent_requests": int(concurrency),
        "max_retries": 5,
        "require_all_responses": False,
    }

    class Teacher(curator.LLM):
        def prompt(self, input: dict) -> str:
            return input["prompt"]

    llm = Teacher(model_name=model, backend="openai", backend_params=params)
    result = llm(prompts, working_dir=workdir)
    answered = len(result.dataset) if hasattr(result, "dataset") else len(result)
    print(json.dumps({"answered": answered}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
