"""A student on this machine: the tiny model built offline, ``--model`` checks, ``distill serve``, and the
pipeline evaluating a local adapter for real. Every command runs as a user runs it, through ``python -m distill``."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("trl")

from support import DISTILL  # noqa: E402

from distill.errors import UsageError  # noqa: E402
from trainers.base import TrainSpec  # noqa: E402
from trainers.local import LocalTrainer  # noqa: E402
from trainers.local.data import read_training_file  # noqa: E402
from trainers.local.masking import IGNORE_INDEX, label_record  # noqa: E402
from trainers.local.tiny_model import make_tiny_model  # noqa: E402

pytestmark = [pytest.mark.local_trainer, pytest.mark.slow]

ROOT = Path(__file__).parent.parent
FIXTURE = Path(__file__).parent / "fixtures" / "local" / "together_cookbook_small_coqa_3.jsonl"
COQA_DEV = ROOT / "distill" / "data" / "coqa_dev_sample.json"
COQA_TRAIN = ROOT / "distill" / "data" / "coqa_train_sample.json"


def distill(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 180):
    return subprocess.run(
        [*DISTILL, *args], capture_output=True, text=True, cwd=cwd, env=env or os.environ, timeout=timeout
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama").path


@pytest.fixture(scope="module")
def adapter(tiny, tmp_path_factory) -> Path:
    """A LoRA adapter trained hard enough on the fixture that its answers differ from the base model's."""
    out = tmp_path_factory.mktemp("adapters") / "adapter"
    spec = TrainSpec(
        training_file=FIXTURE, model=str(tiny), n_epochs=3, batch_size=3, learning_rate=3e-2,
        train_on_inputs="false", max_seq_length=1024, output_dir=out,
    )  # fmt: skip
    LocalTrainer(quiet=True).train(spec)
    return out


# --- the tiny model ---------------------------------------------------------------------------------------------


def readme_local_commands() -> list[str]:
    """The README's shell block that starts with ``--make-tiny-model``, one command per entry."""
    readme = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```sh\n(.*?)```", readme, re.S) if "--make-tiny-model" in b)
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def check_tiny_model(folder: Path) -> None:
    """A Llama of a few hundred thousand parameters whose chat template the trainer's masking reads."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (folder / name).is_file(), name
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.model_type == "llama"
    assert 100_000 < sum(p.numel() for p in model.parameters()) < 1_000_000
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = tokenizer.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert prompt == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nQ<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    record = read_training_file(FIXTURE).records[0]
    example = label_record(tokenizer, record, "false")
    trained = tokenizer.decode([t for t in example.labels if t != IGNORE_INDEX])
    replies = [m.content.strip() for m in record.messages if m.role == "assistant"]
    assert trained == "".join(f"{r}<|eot_id|>" for r in replies)  # only the replies and their <|eot_id|>


def test_the_readme_local_trainer_example_runs_as_written_offline(tmp_path):
    make, train, serve, evaluate = readme_local_commands()
    shutil.copy(FIXTURE, tmp_path / "distilled.jsonl")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    made = distill(*make.split()[1:], cwd=tmp_path, env=env)
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == "tiny-llama" and "--backend local --model tiny-llama" in made.stderr
    check_tiny_model(tmp_path / "tiny-llama")
    with pytest.raises(UsageError, match="not empty"):
        make_tiny_model(tmp_path / "tiny-llama")

    trained = distill(*train.split()[1:], cwd=tmp_path, env=env)
    assert trained.returncode == 0, trained.stderr
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    # the other two are run for real by the tests below (distill serve, then distill eval against it)
    assert serve.startswith("distill serve --model ./tiny-llama --adapter adapter/") and serve.endswith("&")
    assert evaluate.startswith("distill eval") and "--model adapter/" in evaluate


def test_a_missing_folder_and_an_unreachable_hub_fail_in_seconds(tmp_path):
    train = ("train", "--backend", "local", "--file", str(FIXTURE), "--model")
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and k != "HF_HUB_OFFLINE"}
    env["HF_HOME"] = str(tmp_path / "hf")

    missing = distill(*train, "./x", cwd=tmp_path, env=env)
    assert missing.returncode == 2
    assert "no model at ./x" in missing.stderr and "--make-tiny-model" in missing.stderr

    hub = {**env, "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens there: as with no network
    unreachable = distill(*train, "meta-llama/Llama-3.2-1B-Instruct", env=hub)
    assert unreachable.returncode == 2
    # distill's own probe answered (3 s at most), not transformers' five retries (50 s): no timing needed to tell
    assert "cannot download it, http://127.0.0.1:9 does not answer" in unreachable.stderr
    assert "cache has no copy" in unreachable.stderr and "Retrying" not in unreachable.stderr


@pytest.fixture(scope="module")
def served(tiny, adapter) -> Iterator[str]:
    """``distill serve`` of the tiny model and its adapter, in its own process; yields the ``/v1`` URL."""
    process = subprocess.Popen(
        [*DISTILL, "serve", "--model", str(tiny), "--adapter", str(adapter), "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = None
        for line in process.stderr:
            if match := re.search(r"distill serve: serving (\S+)", line):
                url = match.group(1)
                break
        assert url, "distill serve did not start"
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_distill_serve_answers_as_the_openai_api_for_base_and_student(served, tiny, adapter):
    with urllib.request.urlopen(f"{served}/models", timeout=10) as response:
        listed = [m["id"] for m in json.loads(response.read())["data"]]
    assert listed == [str(tiny), str(adapter)]
    question = [{"role": "user", "content": "What is the Vatican Library?"}]
    answers = {}
    for name in (str(tiny), str(adapter)):
        status, body = post(
            f"{served}/chat/completions", {"model": name, "messages": question, "max_tokens": 6}
        )
        assert status == 200, body
        assert body["object"] == "chat.completion" and body["model"] == name
        choice = body["choices"][0]
        assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
        usage = body["usage"]
        assert 0 < usage["completion_tokens"] <= 6 and usage["prompt_tokens"] > 10
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        answers[name] = choice["message"]["content"]
    assert answers[str(tiny)] != answers[str(adapter)]  # the adapter is on for the student, off for the base

    status, body = post(
        f"{served}/completions", {"model": str(adapter), "prompt": "The library", "max_tokens": 3}
    )
    assert status == 200 and body["object"] == "text_completion", body
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 3
    status, body = post(f"{served}/chat/completions", {"model": "nope", "messages": question})
    assert (
        status == 404
        and body["error"]["code"] == "model_not_found"
        and str(adapter) in body["error"]["message"]
    )
    status, body = post(
        f"{served}/chat/completions", {"model": str(tiny), "messages": question, "stream": True}
    )
    assert status == 400 and body["error"]["param"] == "stream"


def test_distill_eval_measures_the_student_through_distill_serve(served, adapter, tmp_path):
    done = distill(
        "eval", "--task", "coqa", "--input", str(COQA_DEV), "--base-url", served, "--model", str(adapter),
        "--max-tokens", "4", "--cache", str(tmp_path / "eval.sqlite"), "--report", str(tmp_path / "r.json"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["model"] == str(adapter) and report["n"] == 12


def local_pipeline(tmp_path: Path, tiny: Path, eval_extra: str = "") -> Path:
    config = tmp_path / "pipeline.toml"
    config.write_text(f"""[pipeline]
dir = "{tmp_path / "out"}"

[run]
input = "{COQA_TRAIN}"
format = "coqa"
model = "local-teacher"
base-url = "bundled:teacher"
cache = "{tmp_path / "cache.sqlite"}"
output = "{tmp_path / "coqa.messages.jsonl"}"
quiet = true

[train]
backend = "local"
model = "{tiny}"
n-epochs = 1
batch-size = 4
learning-rate = 0.03
max-seq-length = 1024
output-dir = "{tmp_path / "adapter"}"
quiet = true

[eval]
task = "coqa"
input = "{COQA_DEV}"
cache = "{tmp_path / "eval-cache.sqlite"}"
max-tokens = 6
{eval_extra}
""")
    return config


def test_a_local_pipeline_evaluates_base_and_student_for_real(tmp_path, tiny):
    done = distill("pipeline", str(local_pipeline(tmp_path, tiny)))
    assert done.returncode == 0, done.stderr
    assert "serving" in done.stderr
    base = json.loads((tmp_path / "out" / "eval.base.json").read_text())
    tuned = json.loads((tmp_path / "out" / "eval.tuned.json").read_text())
    assert base["model"] == str(tiny) and tuned["model"] == str(tmp_path / "adapter")
    assert base["n"] == tuned["n"] == 12
    predictions = [[i["prediction"] for i in r["items"]] for r in (base, tuned)]
    assert predictions[0] != predictions[1]  # two models answered, not one model twice

    # Pointed at a server that does not serve the student (the teacher), it says so and fails; the distilled
    # data and the adapter are reused, so this costs no second run or fine-tune.
    (tmp_path / "out" / "report.json").unlink()
    done = distill("pipeline", str(local_pipeline(tmp_path, tiny, 'base-url = "bundled:teacher"')))
    assert done.returncode == 1, done.stderr
    assert "cannot evaluate the student" in done.stderr and "does not serve" in done.stderr
    assert not (tmp_path / "out" / "report.json").exists()
