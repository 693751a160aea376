"""The local Together fake, driven through the real ``together`` SDK (3.x)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import together
from together import Together
from together.lib.resources.files import FileAlreadyExistsError

from distill.servers.together import FakeTogether, ManualClock

FIXTURES = Path(__file__).parent / "fixtures" / "trainers"
TRAIN = FIXTURES / "small_coqa_3.jsonl"
MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def fake(clock: ManualClock) -> Iterator[FakeTogether]:
    with FakeTogether(
        seconds_per_state=10.0, clock=clock, error_models={"org/broken-model"}
    ).in_thread() as server:
        yield server


@pytest.fixture
def client(fake: FakeTogether) -> Together:
    return Together(api_key="test-key", base_url=fake.url, max_retries=0)


def write_jsonl(path: Path, *records: object) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_upload_is_three_calls_and_passes_a_valid_file(fake: FakeTogether, client: Together) -> None:
    uploaded = client.files.upload(TRAIN)
    assert uploaded.processing_status == "COMPLETED"
    assert fake.calls == [
        ("POST", "/v1/files"),
        ("PUT", f"/uploads/{uploaded.id}"),
        ("POST", f"/v1/files/{uploaded.id}/preprocess"),
    ]
    found = client.files.retrieve(uploaded.id)
    assert found.bytes == TRAIN.stat().st_size
    assert found.validation_report.valid is True
    assert found.validation_report.dataset_format == "CONVERSATION"
    assert found.validation_report.nlines == 3
    assert client.files.content(uploaded.id).read() == TRAIN.read_bytes()
    assert [f.id for f in client.files.list().data] == [uploaded.id]
    assert client.files.delete(uploaded.id).deleted is True
    assert client.files.list().data == []


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "must start with a user message"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
            "two user messages",
        ),
        ({"messages": [{"role": "user", "content": "a"}]}, "no assistant message"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]},
            "unknown role 'bot'",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b", "weight": 2},
                ]
            },
            '"weight" must be the integer 0 or 1',
        ),
        ({"messages": []}, "non-empty list"),
        ({"question": "a", "answer": "b"}, "none of the keys of a known format"),
        ({"messages": [{"role": "user", "content": 3}]}, 'needs string "role" and "content"'),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]},
            "only come first",
        ),
    ],
)
def test_upload_of_a_file_breaking_a_rule_is_invalid_format(
    client: Together, tmp_path: Path, record: dict, reason: str
) -> None:
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path = write_jsonl(tmp_path / "bad.jsonl", good, record)
    uploaded = client.files.upload(path)
    assert uploaded.processing_status == "INVALID_FORMAT"
    report = client.files.retrieve(uploaded.id).validation_report
    assert report.valid is False
    assert report.error_type == "INVALID_FORMAT"
    assert report.error.startswith("line 2: ")
    assert reason in report.error


def test_mixed_formats_in_one_file_are_invalid(client: Together, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "mixed.jsonl", {"text": "a"}, {"prompt": "a", "completion": "b"})
    uploaded = client.files.upload(path)
    assert "began in GENERAL format" in client.files.retrieve(uploaded.id).validation_report.error


def test_instruction_lines_need_string_fields(client: Together, tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "i.jsonl", {"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": 3}
    )
    report = client.files.retrieve(client.files.upload(path).id).validation_report
    assert report.error == 'line 2: "prompt" and "completion" must be strings'


def test_weights_and_other_formats_are_valid(client: Together, tmp_path: Path) -> None:
    weighted = {
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a", "weight": 0},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "a2", "weight": 1},
        ]
    }
    report = client.files.retrieve(client.files.upload(write_jsonl(tmp_path / "w.jsonl", weighted)).id)
    assert report.validation_report.dataset_has_message_weights is True
    preference = {
        "input": {"messages": [{"role": "user", "content": "q"}]},
        "preferred_output": [{"role": "assistant", "content": "good"}],
        "non_preferred_output": [{"role": "assistant", "content": "bad"}],
    }
    uploaded = client.files.upload(write_jsonl(tmp_path / "p.jsonl", preference))
    assert client.files.retrieve(uploaded.id).validation_report.dataset_format == "PREFERENCE"


def test_an_already_uploaded_checksum_gets_409_and_the_same_file(
    fake: FakeTogether, client: Together
) -> None:
    first = client.files.upload(TRAIN)
    again = client.files.upload(TRAIN)
    assert again.id == first.id
    assert fake.count("PUT", f"/uploads/{first.id}") == 1
    with pytest.raises(FileAlreadyExistsError) as caught:
        client.files.upload(TRAIN, raise_if_already_exists=True)
    assert caught.value.file_id == first.id


def test_put_of_other_bytes_than_announced_is_refused(fake: FakeTogether) -> None:
    response = httpx.post(
        f"{fake.url}/v1/files",
        headers={"Authorization": "Bearer k"},
        data={"purpose": "fine-tune", "file_name": "x.jsonl", "file_type": "jsonl", "checksum": "0" * 64},
        follow_redirects=False,
    )
    assert response.status_code == 302
    assert httpx.put(response.headers["Location"], content=b"other bytes").status_code == 400


def test_wrong_key_is_401_and_the_key_is_not_echoed(tmp_path: Path) -> None:
    with FakeTogether(api_keys={"right-key"}).in_thread() as server:
        wrong = Together(api_key="wrong-key-123", base_url=server.url, max_retries=0)
        with pytest.raises(together.AuthenticationError) as caught:
            wrong.files.list()
        assert "wrong-key-123" not in str(caught.value.body)
        assert Together(api_key="right-key", base_url=server.url, max_retries=0).files.list().data == []


def test_limits_and_price_estimate(client: Together) -> None:
    limits = client.fine_tuning.model_limits(model_name=MODEL)
    assert limits.lora_training.max_rank == 64
    assert limits.supports_vision is False
    uploaded = client.files.upload(TRAIN)
    estimate = client.fine_tuning.estimate_price(training_file=uploaded.id, model=MODEL, n_epochs=2)
    assert estimate.estimation_available is True
    assert estimate.estimated_total_price > 0


def test_create_sends_every_option_and_never_echoes_the_wandb_key(
    fake: FakeTogether, client: Together
) -> None:
    training = client.files.upload(TRAIN)
    job = client.fine_tuning.create(
        training_file=training.id,
        model=MODEL,
        n_epochs=3,
        n_checkpoints=2,
        batch_size=16,
        learning_rate=2e-5,
        warmup_ratio=0.1,
        lora=True,
        lora_r=16,
        lora_alpha=32,
        train_on_inputs=False,
        suffix="coqa-demo",
        wandb_api_key="wandb-secret-999",
    )
    body = fake.create_bodies[-1]
    assert body["training_file"] == training.id
    assert body["model"] == MODEL
    assert (body["n_epochs"], body["n_checkpoints"], body["batch_size"]) == (3, 2, 16)
    assert (body["learning_rate"], body["warmup_ratio"]) == (2e-5, 0.1)
    assert body["training_type"] == {
        "type": "Lora",
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.0,
        "lora_trainable_modules": "all-linear",
    }
    assert body["training_method"] == {"method": "sft", "train_on_inputs": False}
    assert body["suffix"] == "coqa-demo"
    assert body["wandb_key"] == "wandb-secret-999"
    assert job.output_name.startswith("fake-user/Meta-Llama-3.1-8B-Instruct-Reference-coqa-demo-")
    retrieved = client.fine_tuning.retrieve(job.id)
    assert "wandb-secret-999" not in json.dumps(retrieved.to_dict(mode="json", warnings=False))
    assert retrieved.batch_size == 16


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n_epochs": 0}, "n_epochs must be an integer from 1 to 20"),
        ({"batch_size": 64}, "batch_size must be from 8 to 32"),
        ({"training_type": {"type": "Lora", "lora_r": 128, "lora_alpha": 16}}, "lora_r must be an integer"),
        ({"training_method": {"method": "sft", "train_on_inputs": "maybe"}}, "train_on_inputs must be"),
        ({"n_evals": 2}, "n_evals > 0 needs a validation_file"),
        ({"suffix": "x" * 41}, "at most 40 characters"),
        ({"training_file": "file-missing"}, "training_file 'file-missing' not found"),
        ({"model": ""}, "model is required"),
    ],
)
def test_create_checks_the_body(client: Together, change: dict, message: str) -> None:
    training = client.files.upload(TRAIN)
    body = {"training_file": training.id, "model": MODEL, "n_epochs": 1, **change}
    with pytest.raises(together.BadRequestError) as caught:
        client.post("/v1/fine-tunes", body=body, cast_to=httpx.Response)
    assert message in caught.value.body["error"]["message"]


def test_create_refuses_a_file_that_failed_validation(client: Together, tmp_path: Path) -> None:
    bad = client.files.upload(write_jsonl(tmp_path / "bad.jsonl", {"messages": []}))
    with pytest.raises(together.BadRequestError, match="not a validated fine-tune file"):
        client.fine_tuning.create(training_file=bad.id, model=MODEL)


def test_unknown_model_when_the_catalog_is_set(tmp_path: Path) -> None:
    with FakeTogether(models={MODEL}).in_thread() as server:
        client = Together(api_key="k", base_url=server.url, max_retries=0)
        with pytest.raises(together.NotFoundError, match="not available for fine-tuning"):
            client.fine_tuning.model_limits(model_name="org/unknown")


def statuses(client: Together, job_id: str, clock: ManualClock, steps: int, step: float) -> list[str]:
    seen = []
    for _ in range(steps):
        seen.append(client.fine_tuning.retrieve(job_id).status)
        clock.advance(step)
    return seen


def test_job_moves_pending_queued_running_completed_on_the_clock(
    client: Together, clock: ManualClock
) -> None:
    training = client.files.upload(TRAIN)
    job = client.fine_tuning.create(training_file=training.id, model=MODEL, n_epochs=2)
    assert statuses(client, job.id, clock, 5, 10.0) == [
        "pending",
        "queued",
        "running",
        "completed",
        "completed",
    ]
    events = client.fine_tuning.list_events(job.id).data
    types = [e.type for e in events]
    assert types[:3] == ["job_pending", "job_pending", "job_start"]
    assert types.count("epoch_complete") == 2
    assert types[-1] == "job_complete"
    assert all(e.object == "fine-tune-event" for e in events)
    checkpoints = client.fine_tuning.list_checkpoints(job.id).data
    assert {c.checkpoint for c in checkpoints} == {"model", "adapter"}
    assert [j.id for j in client.fine_tuning.list().data] == [job.id]


def test_events_are_appended_per_transition(client: Together, clock: ManualClock) -> None:
    training = client.files.upload(TRAIN)
    job = client.fine_tuning.create(training_file=training.id, model=MODEL)
    counts = []
    for _ in range(4):
        counts.append(len(client.fine_tuning.list_events(job.id).data))
        clock.advance(10.0)
    assert counts[0] == 1 and counts[1] == 2 and counts[1] < counts[2] < counts[3]


def test_a_marked_model_ends_in_error(client: Together, clock: ManualClock) -> None:
    training = client.files.upload(TRAIN)
    job = client.fine_tuning.create(training_file=training.id, model="org/broken-model")
    assert statuses(client, job.id, clock, 4, 10.0) == ["pending", "queued", "running", "error"]
    last = client.fine_tuning.list_events(job.id).data[-1]
    assert (last.type, last.level) == ("job_error", "error")


def test_a_training_file_named_fake_error_ends_in_error(
    client: Together, clock: ManualClock, tmp_path: Path
) -> None:
    path = tmp_path / "fake-error.jsonl"
    path.write_bytes(TRAIN.read_bytes())
    job = client.fine_tuning.create(training_file=client.files.upload(path).id, model=MODEL)
    assert statuses(client, job.id, clock, 4, 10.0)[-1] == "error"


def test_cancel(client: Together, clock: ManualClock) -> None:
    training = client.files.upload(TRAIN)
    job = client.fine_tuning.create(training_file=training.id, model=MODEL)
    clock.advance(10.0)
    assert client.fine_tuning.cancel(job.id).status == "cancel_requested"
    clock.advance(10.0)
    assert client.fine_tuning.retrieve(job.id).status == "cancelled"
    assert client.fine_tuning.list_events(job.id).data[-1].type == "job_stopped"
    with pytest.raises(together.BadRequestError, match="cannot be cancelled"):
        client.fine_tuning.cancel(job.id)


def test_unknown_ids_are_404(client: Together) -> None:
    with pytest.raises(together.NotFoundError):
        client.fine_tuning.retrieve("ft-nope")
    with pytest.raises(together.NotFoundError):
        client.files.retrieve("file-nope")


def test_runs_as_a_process_on_a_free_port(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    process = subprocess.Popen(
        [sys.executable, "-m", "distill.servers.together", "--port", "0", "--port-file", str(port_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists():
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "the fake never wrote its port"
            time.sleep(0.05)
        url = f"http://127.0.0.1:{int(port_file.read_text())}"
        client = Together(api_key="process-key-42", base_url=url, max_retries=0)
        uploaded = client.files.upload(TRAIN)
        assert client.files.retrieve(uploaded.id).processing_status == "COMPLETED"
    finally:
        process.terminate()
        out, err = process.communicate(timeout=10)
    assert process.returncode == 0
    assert b"listening on" in out
    assert b"process-key-42" not in out + err


async def test_in_process_with_the_async_client() -> None:
    async with FakeTogether(seconds_per_state=0.01) as server:
        client = together.AsyncTogether(api_key="k", base_url=server.url, max_retries=0)
        uploaded = await client.files.upload(TRAIN)
        assert uploaded.id in server.files
        assert (await client.files.retrieve(uploaded.id)).processing_status == "COMPLETED"
        job = await client.fine_tuning.create(training_file=uploaded.id, model=MODEL)
        while (await client.fine_tuning.retrieve(job.id)).status != "completed":
            await asyncio.sleep(0.01)
        assert (await client.fine_tuning.list_events(job.id)).data[-1].type == "job_complete"
