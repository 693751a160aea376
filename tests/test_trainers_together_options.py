"""``distill train --backend together`` options of the 3.x SDK: early stopping, from_checkpoint, the price estimate
before the job and ``--budget``, through the CLI, the real SDK and the fake."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from distill.cli import main
from distill.servers.together import FakeTogether

MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
TRAIN = Path(__file__).parent / "fixtures" / "trainers" / "small_coqa_3.jsonl"


@pytest.fixture
def fake(monkeypatch) -> Iterator[FakeTogether]:
    monkeypatch.setenv("TOGETHER_API_KEY", "test-key")
    with FakeTogether(seconds_per_state=0.02).in_thread() as server:
        yield server


def train(fake: FakeTogether, tmp_path: Path, *extra: str) -> int:
    return main(["train", "--file", str(TRAIN), "--model", MODEL, "--base-url", fake.url, "--poll-interval", "0.02",
                 "--jobs-db", str(tmp_path / "jobs.sqlite3"), *extra])  # fmt: skip


def test_the_price_estimate_is_shown_before_the_job_and_early_stopping_reaches_it(fake, tmp_path, capsys):
    flags = ["--validation-file", str(TRAIN), "--n-evals", "6", "--early-stopping-patience", "3",
             "--early-stopping-min-delta", "0.01"]  # fmt: skip
    assert train(fake, tmp_path, *flags) == 0
    err = capsys.readouterr().err
    assert err.index("Together estimates this fine-tune at $") < err.index("started job")
    body = fake.create_bodies[-1]
    assert (body["early_stopping_enabled"], body["early_stopping_patience"], body["early_stopping_min_delta"]) == (
        True, 3, 0.01,
    )  # fmt: skip
    assert fake.count("POST", "/v1/fine-tunes/estimate-price") >= 1


def test_early_stopping_without_a_validation_file_is_a_usage_error(fake, tmp_path, capsys):
    assert train(fake, tmp_path, "--early-stopping-patience", "2") == 2
    assert "--validation-file" in capsys.readouterr().err
    assert fake.count("POST", "/v1/fine-tunes") == 0


def test_a_job_continues_from_a_checkpoint_of_an_earlier_one(fake, tmp_path, capsys):
    assert train(fake, tmp_path) == 0
    (first,) = fake.jobs.values()
    assert train(fake, tmp_path, "--from-checkpoint", first.id) == 0
    body = fake.create_bodies[-1]
    assert body["from_checkpoint"] == first.id and len(fake.jobs) == 2


def test_a_budget_below_the_estimate_starts_nothing_and_exits_75(fake, tmp_path, capsys):
    assert train(fake, tmp_path, "--n-epochs", "5", "--budget", "0.0001") == 75
    err = capsys.readouterr().err
    assert "over --budget 0.0001; nothing was started" in err
    assert fake.count("POST", "/v1/fine-tunes") == 0
    assert train(fake, tmp_path, "--n-epochs", "5", "--budget", "5") == 0
