"""Together's ``train_on_inputs=auto`` masks nothing in ``text`` files: ``distill train`` and ``distill check`` say
so, through the real CLI, and ``distill pipeline`` writes ``messages`` unless told otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from distill.cli import main
from distill.servers.together import FakeTogether
from tests.support import DISTILL

MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
MESSAGES = Path(__file__).parent / "fixtures" / "trainers" / "small_coqa_3.jsonl"
WARNING = "masks nothing in text files"


@pytest.fixture
def fake() -> Iterator[FakeTogether]:
    with FakeTogether(seconds_per_state=0.02).in_thread() as server:
        yield server


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "coqa.llama2.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for n in range(3):
            text = f"<s>[INST] <<SYS>>\nRead the story.\n<</SYS>>\n\nQuestion {n}? [/INST] Answer {n} </s>"
            f.write(json.dumps({"text": text}) + "\n")
    return path


def train_argv(fake: FakeTogether, file: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["train", "--backend", "together", "--file", str(file), "--model", MODEL, "--base-url", fake.url,
            "--poll-interval", "0.02", "--jobs-db", str(tmp_path / "jobs.sqlite3"), "--quiet", *extra]  # fmt: skip


def test_training_a_text_file_with_auto_warns_and_names_the_fix(fake, text_file, tmp_path):
    env = {**os.environ, "TOGETHER_API_KEY": "test-key", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [*DISTILL, *train_argv(fake, text_file, tmp_path, "--train-on-inputs", "auto")],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert WARNING in done.stderr and "--output-format messages" in done.stderr
    assert "--train-on-inputs true" in done.stderr
    assert done.stdout.strip().startswith("fake-user/")  # a warning, not a refusal


@pytest.mark.parametrize("case", ["messages file", "text on purpose"])
def test_no_warning_when_the_prompts_are_masked_or_trained_on_purpose(
    fake, text_file, tmp_path, capsys, monkeypatch, case
):
    monkeypatch.setenv("TOGETHER_API_KEY", "test-key")
    argv = (
        train_argv(fake, MESSAGES, tmp_path)
        if case == "messages file"
        else train_argv(fake, text_file, tmp_path, "--train-on-inputs", "true")
    )
    assert main(argv) == 0
    assert WARNING not in capsys.readouterr().err


def test_check_reports_the_same_for_text_files_only(text_file, capsys):
    text = subprocess.run([*DISTILL, "check", str(text_file)], capture_output=True, text=True, timeout=60)
    assert text.returncode == 0 and WARNING in text.stdout and "(format: text)" in text.stdout
    assert main(["check", str(MESSAGES)]) == 0
    assert WARNING not in capsys.readouterr().out
