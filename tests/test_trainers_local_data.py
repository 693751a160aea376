"""The local back-end's parts that need no extra: reading fine-tuning files, settings, the output-folder record."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from distill.conversation import Message
from distill.errors import CheckError, InputError, UsageError
from trainers.base import TRAINERS, TrainResult, TrainSpec
from trainers.local import LocalTrainer, manifest
from trainers.local.data import read_training_file
from trainers.local.options import MAX_BATCH_SIZE, default_output_dir, local_options

FIXTURE = Path(__file__).parent / "fixtures" / "local" / "together_cookbook_small_coqa_3.jsonl"
ROOT = Path(__file__).parent.parent


def write_lines(path: Path, *lines: object) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_reads_the_messages_fixture():
    data = read_training_file(FIXTURE)
    assert data.format == "messages" and len(data.records) == 3
    first = data.records[0]
    assert first.source == f"{FIXTURE}:1"
    assert [m.role for m in first.messages[:3]] == ["system", "user", "assistant"]
    assert first.messages[1] == Message("user", "When was the Vat formally opened?")
    assert len(data.records[1].messages) == 11


def test_reads_prompt_completion_and_text(tmp_path):
    pc = read_training_file(
        write_lines(tmp_path / "pc.jsonl", {"prompt": "Q: 2+2?\nA:", "completion": " 4"}, "")
    )
    assert pc.format == "prompt_completion" and pc.records[0].completion == " 4"
    text = read_training_file(write_lines(tmp_path / "t.jsonl", {"text": "one"}, {"text": "two"}))
    assert text.format == "text" and [r.text for r in text.records] == ["one", "two"]


def test_weights_are_kept(tmp_path):
    line = {
        "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 0}]
    }
    data = read_training_file(write_lines(tmp_path / "w.jsonl", line))
    assert data.records[0].messages[1].weight == 0
    assert data.records[0].messages[0].weight is None


USER = {"role": "user", "content": "hi"}
ASSISTANT = {"role": "assistant", "content": "hello"}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "w.jsonl:2: not valid JSON"),
        ("[1, 2]", "w.jsonl:2: each line must be a JSON object"),
        ({"text": "x"}, "w.jsonl:2: a text line in a messages file"),
        ({"messages": [USER, ASSISTANT], "id": 3}, r"w.jsonl:2: keys \['id', 'messages'\] match no format"),
        ({"messages": []}, "'messages' must be a non-empty list"),
        ({"messages": [ASSISTANT, USER]}, "the first message after the system prompt must be a user message"),
        ({"messages": [USER]}, "no assistant message to train on"),
        ({"messages": [USER, {"role": "tool", "content": "x"}]}, "message 1: role 'tool' is not one of"),
        (
            {"messages": [USER, {"role": "assistant", "content": ["x"]}]},
            "message 1: 'content' must be a string",
        ),
        ({"messages": [USER, {**ASSISTANT, "weight": 0.5}]}, "message 1: 'weight' must be 0 or 1"),
        ({"messages": [USER, {**ASSISTANT, "weight": True}]}, "message 1: 'weight' must be 0 or 1"),
    ],
)
def test_bad_lines_are_named(tmp_path, line, message):
    path = write_lines(tmp_path / "w.jsonl", {"messages": [USER, ASSISTANT]}, line)
    with pytest.raises(CheckError, match=message):
        read_training_file(path)


def test_bad_prompt_completion_types_and_empty_files(tmp_path):
    with pytest.raises(CheckError, match="'completion' must be a string, not int"):
        read_training_file(write_lines(tmp_path / "pc.jsonl", {"prompt": "a", "completion": 1}))
    with pytest.raises(CheckError, match="no training examples"):
        read_training_file(write_lines(tmp_path / "empty.jsonl", "", "  "))
    with pytest.raises(InputError, match="--file"):
        read_training_file(tmp_path / "missing.jsonl")


def spec(**changes) -> TrainSpec:
    return TrainSpec(training_file=FIXTURE, model="models/tiny-llama/", **changes)


def test_options_from_a_spec(tmp_path):
    options = local_options(spec())
    assert options.batch_size == MAX_BATCH_SIZE and options.micro_batch_size == 4
    assert options.accumulation_steps == 2 and options.seed == 42
    assert options.output_dir == Path("tiny-llama-distill")
    options = local_options(spec(batch_size=5, extra={"micro_batch_size": 2, "seed": 7}, output_dir=tmp_path))
    assert (options.batch_size, options.micro_batch_size, options.accumulation_steps) == (5, 2, 3)
    assert options.seed == 7 and options.output_dir == tmp_path
    assert default_output_dir(spec(suffix="coqa")) == Path("tiny-llama-coqa")
    assert options.optimizer_steps(n_examples=7, n_epochs=2) == 2 * 2  # 4 micro-batches of 2, 3 per step
    assert local_options(spec(extra={"n_evals": 0})).n_evals == 0  # what `distill train` always passes
    assert local_options(spec(validation_file=FIXTURE, extra={"n_evals": 0})).n_evals == 1
    assert local_options(spec(validation_file=FIXTURE, extra={"n_evals": 3})).n_evals == 3


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"wandb_key_env": "WANDB_API_KEY"}, "drop --wandb-key-env"),
        ({"extra": {"packing": True}}, "no setting packing; it knows n_evals"),
        ({"extra": {"seed": "1"}}, "seed must be an integer"),
        ({"extra": {"n_evals": 2}}, "--n-evals 2: evaluations need --validation-file"),
        ({"batch_size": 0}, "--batch-size 0"),
        ({"n_epochs": 0}, "--n-epochs 0"),
        ({"warmup_ratio": 1.5}, "--warmup-ratio 1.5"),
        ({"lora_dropout": 1.0}, "--lora-dropout 1.0"),
        ({"learning_rate": 0.0}, "--learning-rate 0.0"),
    ],
)
def test_settings_the_local_backend_cannot_honour(changes, message):
    with pytest.raises(UsageError, match=message):
        local_options(spec(**changes))


def test_registered_as_local():
    assert TRAINERS.get("local") is LocalTrainer


def test_importing_needs_no_torch_and_training_without_it_says_how_to_install(tmp_path):
    script = (
        "import sys\n"
        "import trainers.local\n"
        "assert not {'torch', 'transformers', 'peft', 'trl'} & set(sys.modules), 'heavy import'\n"
        "sys.modules['torch'] = None\n"  # as if the extra were not installed
        "from pathlib import Path\n"
        "from distill.errors import UsageError\n"
        "from trainers.base import TrainSpec\n"
        f"spec = TrainSpec(training_file=Path({str(FIXTURE)!r}), model='m', output_dir=Path(sys.argv[1]))\n"
        "try:\n"
        "    trainers.local.LocalTrainer().train(spec)\n"
        "except UsageError as e:\n"
        "    print(e)\n"
    )
    with_tmp = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-c", script, str(with_tmp)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout.strip()
        == "--backend local needs the 'local' extra (torch is missing): pip install 'distill[local]'"
    )
    assert not with_tmp.exists()


def test_an_output_folder_is_reused_only_by_the_same_fine_tune(tmp_path):
    key = manifest.run_key(spec(output_dir=tmp_path))
    assert manifest.finished_result(tmp_path / "new", key) is None
    assert manifest.finished_result(tmp_path, key) is None  # exists but empty
    result = TrainResult(
        job_id=str(tmp_path), status="completed", model=str(tmp_path), details={"losses": [1.5]}
    )
    manifest.record(tmp_path, key, result)
    assert manifest.finished_result(tmp_path, key) == result
    other = manifest.run_key(spec(output_dir=tmp_path, lora_r=16))
    with pytest.raises(UsageError, match="already holds a different fine-tune"):
        manifest.finished_result(tmp_path, other)
    (tmp_path / manifest.MANIFEST_NAME).write_text("{truncated")
    with pytest.raises(UsageError, match="already holds files of its own"):
        manifest.finished_result(tmp_path, key)
    (tmp_path / manifest.MANIFEST_NAME).unlink()
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="already holds files of its own"):
        manifest.finished_result(tmp_path, key)
