"""The Together back-end against the local fake, through the real SDK: upload, create, follow, re-attach, cancel."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from distill.errors import AuthenticationError, CheckError, TrainerError, UsageError
from distill.servers.together import INVALID_MARKER, FakeTogether, ManualClock
from trainers.base import TRAINERS, TrainSpec
from trainers.jobs import JobStore
from trainers.together import TogetherTrainer
from trainers.together.trainer import interrupts_held

FIXTURES = Path(__file__).parent / "fixtures" / "trainers"
TRAIN = FIXTURES / "small_coqa_3.jsonl"
MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
BROKEN = "org/broken-model"
TOGETHER_KEY = "together-secret-key-0001"
WANDB_KEY = "wandb-secret-key-0002"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def fake(clock: ManualClock) -> Iterator[FakeTogether]:
    with FakeTogether(seconds_per_state=1.0, clock=clock, error_models={BROKEN}).in_thread() as server:
        yield server


@pytest.fixture
def train_file(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_bytes(TRAIN.read_bytes())
    return path


class Trainer:
    """A trainer on the fake, its progress output and its job record, with the fake's clock as its sleep."""

    def __init__(self, fake: FakeTogether, clock: ManualClock, jobs: Path, **overrides) -> None:
        self.out = io.StringIO()
        options = {
            "base_url": fake.url,
            "api_key": TOGETHER_KEY,
            "jobs_path": jobs,
            "poll_interval": 0.5,
            "out": self.out,
            "sleep": clock.advance,
            "max_retries": 0,
            **overrides,
        }
        self.trainer = TogetherTrainer(**options)

    def train(self, spec: TrainSpec):
        return self.trainer.train(spec)


@pytest.fixture
def make(fake: FakeTogether, clock: ManualClock, tmp_path: Path):
    return lambda **overrides: Trainer(fake, clock, tmp_path / "jobs.sqlite3", **overrides)


def spec_for(path: Path, **changes) -> TrainSpec:
    return TrainSpec(training_file=path, model=changes.pop("model", MODEL), **changes)


class InterruptOnce:
    """A sleep that behaves like Ctrl-C pressed during poll number ``at``, and moves the clock otherwise."""

    def __init__(self, clock: ManualClock, at: int) -> None:
        self.clock, self.at, self.calls = clock, at, 0

    def __call__(self, seconds: float) -> None:
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        self.clock.advance(seconds)


def test_registered_as_together() -> None:
    assert TRAINERS.get("together") is TogetherTrainer


def test_follows_a_job_to_completed_and_names_the_model(fake: FakeTogether, make, train_file: Path) -> None:
    run = make()
    result = run.train(spec_for(train_file, suffix="demo"))
    job = fake.jobs[result.job_id]
    assert result.status == "completed"
    assert result.model == job.output_name
    assert result.model.startswith("fake-user/Meta-Llama-3.1-8B-Instruct-Reference-demo-")
    shown = run.out.getvalue()
    order = [shown.index(f"job {result.job_id}: {s}") for s in ("pending", "queued", "running", "completed")]
    assert order == sorted(order)
    assert "job_complete: Job finished" in shown
    assert shown.count("epoch_complete") == 1
    record = JobStore(run.trainer.store.path).jobs()[0]
    assert (record.job_id, record.status, record.output_model) == (result.job_id, "completed", result.model)
    assert record.training_file == str(train_file.resolve())


def test_the_same_command_again_reports_the_finished_job(fake: FakeTogether, make, train_file: Path) -> None:
    first = make().train(spec_for(train_file))
    again = make()
    second = again.train(spec_for(train_file))
    assert (second.job_id, second.model, second.status) == (first.job_id, first.model, "completed")
    assert second.details["reattached"] is True
    assert fake.count("POST", "/v1/files") == 1
    assert fake.count("POST", "/v1/fine-tunes") == 1
    assert "already ran as job" in again.out.getvalue()


def test_other_options_or_bytes_make_a_new_job_but_reuse_the_upload(
    fake: FakeTogether, make, train_file: Path
) -> None:
    make().train(spec_for(train_file))
    make().train(spec_for(train_file, n_epochs=2))
    assert fake.count("POST", "/v1/fine-tunes") == 2
    assert fake.count("POST", "/v1/files") == 1
    train_file.write_bytes(train_file.read_bytes() + TRAIN.read_bytes())
    make().train(spec_for(train_file))
    assert fake.count("POST", "/v1/files") == 2
    assert fake.count("POST", "/v1/fine-tunes") == 3


def test_interrupted_without_cancel_leaves_the_job_running_then_reattaches(
    fake: FakeTogether, make, clock: ManualClock, train_file: Path
) -> None:
    asked: list[str] = []
    first = make(sleep=InterruptOnce(clock, at=3), confirm_cancel=lambda q: asked.append(q) or False)
    with pytest.raises(KeyboardInterrupt):
        first.train(spec_for(train_file))
    (job,) = fake.jobs.values()
    assert job.status in ("pending", "queued")
    assert asked == [f"cancel fine-tune job {job.id}?"]
    assert "still running on Together; run the same distill train command again" in first.out.getvalue()
    second = make()
    result = second.train(spec_for(train_file))
    assert (result.job_id, result.status) == (job.id, "completed")
    assert "re-attaching" in second.out.getvalue()
    assert fake.count("POST", "/v1/files") == 1
    assert fake.count("POST", "/v1/fine-tunes") == 1


def test_interrupted_and_confirmed_cancels_the_job(
    fake: FakeTogether, make, clock: ManualClock, train_file: Path
) -> None:
    run = make(sleep=InterruptOnce(clock, at=2), confirm_cancel=lambda q: True)
    result = run.train(spec_for(train_file))
    assert result.status == "cancelled"
    assert result.model is None
    assert fake.jobs[result.job_id].status == "cancelled"
    assert fake.count("POST", f"/v1/fine-tunes/{result.job_id}/cancel") == 1
    assert JobStore(run.trainer.store.path).jobs()[0].status == "cancelled"


def test_without_a_terminal_an_interrupt_never_cancels(
    fake: FakeTogether, make, clock: ManualClock, train_file: Path
) -> None:
    run = make(sleep=InterruptOnce(clock, at=2))  # pytest's stdin is not a terminal: no question is asked
    with pytest.raises(KeyboardInterrupt):
        run.train(spec_for(train_file))
    assert not any(path.endswith("/cancel") for _, path in fake.calls)


def test_a_failed_job_is_reported_and_a_rerun_starts_a_new_one(
    fake: FakeTogether, make, train_file: Path
) -> None:
    failed = make().train(spec_for(train_file, model=BROKEN))
    assert failed.status == "error"
    assert failed.model is None
    assert failed.details["error"] == "Training failed (simulated by the fake)"
    rerun = make()
    second = rerun.train(spec_for(train_file, model=BROKEN))
    assert second.job_id != failed.job_id
    assert "ended error; starting a new one" in rerun.out.getvalue()
    assert fake.count("POST", "/v1/files") == 1


def test_create_carries_every_option(fake: FakeTogether, make, train_file: Path, monkeypatch) -> None:
    monkeypatch.setenv("MY_WANDB", WANDB_KEY)
    validation = train_file.with_name("valid.jsonl")
    validation.write_text(TRAIN.read_text().splitlines()[0] + "\n")
    spec = spec_for(
        train_file,
        validation_file=validation,
        n_epochs=3,
        n_checkpoints=2,
        batch_size=16,
        learning_rate=2e-5,
        warmup_ratio=0.1,
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        train_on_inputs="false",
        suffix="coqa",
        wandb_key_env="MY_WANDB",
        extra={"n_evals": 2},
    )
    make().train(spec)
    body = fake.create_bodies[-1]
    files = {f.filename: f.id for f in fake.files.values()}
    assert body["training_file"] == files["train.jsonl"]
    assert body["validation_file"] == files["valid.jsonl"]
    assert (body["n_epochs"], body["n_checkpoints"], body["n_evals"], body["batch_size"]) == (3, 2, 2, 16)
    assert (body["learning_rate"], body["warmup_ratio"], body["suffix"]) == (2e-5, 0.1, "coqa")
    assert body["training_type"] == {
        "type": "Lora",
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
        "lora_trainable_modules": "all-linear",
    }
    assert body["training_method"] == {"method": "sft", "train_on_inputs": False}
    assert body["wandb_key"] == WANDB_KEY


def test_full_training_and_train_on_inputs_true(fake: FakeTogether, make, train_file: Path) -> None:
    make().train(spec_for(train_file, lora=False, train_on_inputs="true"))
    body = fake.create_bodies[-1]
    assert body["training_type"] == {"type": "Full"}
    assert body["training_method"] == {"method": "sft", "train_on_inputs": True}


def test_keys_never_reach_output_or_record(
    fake: FakeTogether, make, train_file: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("MY_WANDB", WANDB_KEY)
    run = make()
    result = run.train(spec_for(train_file, wandb_key_env="MY_WANDB"))
    assert fake.create_bodies[-1]["wandb_key"] == WANDB_KEY  # it was sent...
    written = run.out.getvalue().encode() + json.dumps(result.details).encode()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            written += path.read_bytes()
    for secret in (TOGETHER_KEY, WANDB_KEY):  # ...and is nowhere else
        assert secret.encode() not in written
    assert any(e["type"] == "wandb_init" for e in fake.jobs[result.job_id].events)


def test_a_file_breaking_the_rules_is_refused_before_any_upload(
    fake: FakeTogether, make, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "assistant", "content": "hi"}]}) + "\n")
    with pytest.raises(CheckError, match="breaks the fine-tuning data rules"):
        make().train(spec_for(bad))
    assert fake.calls == []


def test_a_file_the_service_rejects_is_a_check_error_and_starts_nothing(
    fake: FakeTogether, make, tmp_path: Path
) -> None:
    refused = tmp_path / f"{INVALID_MARKER}.jsonl"
    refused.write_bytes(TRAIN.read_bytes())
    with pytest.raises(
        CheckError, match=r"Together rejected .*fake-invalid.jsonl \(file file-.*\): line 1: refused"
    ):
        make().train(spec_for(refused))
    assert fake.count("POST", "/v1/files") == 1
    assert fake.count("POST", "/v1/fine-tunes") == 0


def test_waits_for_the_services_check_of_an_upload(
    clock: ManualClock, tmp_path: Path, train_file: Path
) -> None:
    with FakeTogether(seconds_per_state=1.0, clock=clock, file_processing_seconds=2.0).in_thread() as server:
        result = Trainer(server, clock, tmp_path / "jobs").train(spec_for(train_file))
        (uploaded,) = server.files.values()
        assert result.status == "completed"
        assert server.count("GET", f"/v1/files/{uploaded.id}") >= 3  # RUNNING, RUNNING, ..., COMPLETED


def test_options_the_sdk_refuses_are_usage_errors(make, train_file: Path) -> None:
    with pytest.raises(UsageError, match="batch size of 4 is lower"):
        make().train(spec_for(train_file, batch_size=4))


def test_boilerplate_masking_is_local_only(make, train_file: Path) -> None:
    with pytest.raises(UsageError, match="--train-on-inputs boilerplate is not supported by Together"):
        make().train(spec_for(train_file, train_on_inputs="boilerplate"))


def test_missing_wandb_variable_is_named(make, train_file: Path, monkeypatch) -> None:
    monkeypatch.delenv("NO_SUCH_WANDB", raising=False)
    with pytest.raises(UsageError, match="--wandb-key-env names NO_SUCH_WANDB"):
        make().train(spec_for(train_file, wandb_key_env="NO_SUCH_WANDB"))


def test_base_url_comes_from_together_base_url_when_not_given(
    fake: FakeTogether, make, train_file: Path, monkeypatch
) -> None:
    monkeypatch.setenv("TOGETHER_BASE_URL", fake.url)
    run = make(base_url=None)
    assert run.train(spec_for(train_file)).status == "completed"
    assert JobStore(run.trainer.store.path).jobs()[0].base_url == fake.url


def test_missing_and_wrong_keys_are_authentication_errors(
    clock: ManualClock, tmp_path: Path, train_file: Path, monkeypatch
) -> None:
    monkeypatch.delenv("TOGETHER_API_KEY", raising=False)
    with FakeTogether(api_keys={"right"}, clock=clock).in_thread() as server:
        with pytest.raises(AuthenticationError, match="set TOGETHER_API_KEY"):
            Trainer(server, clock, tmp_path / "j", api_key=None).train(spec_for(train_file))
        with pytest.raises(AuthenticationError, match="HTTP 401") as caught:
            Trainer(server, clock, tmp_path / "j", api_key="wrong-key-77").train(spec_for(train_file))
        assert "wrong-key-77" not in str(caught.value)


def test_an_unreachable_api_is_a_trainer_error(clock: ManualClock, tmp_path: Path, train_file: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = TogetherTrainer(
        base_url=f"http://127.0.0.1:{port}", api_key="k", jobs_path=tmp_path / "j", max_retries=0, quiet=True
    )
    with pytest.raises(TrainerError, match="cannot reach the Together API"):
        run.train(spec_for(train_file))


def test_refresh_updates_a_recorded_job(
    fake: FakeTogether, make, clock: ManualClock, train_file: Path
) -> None:
    run = make(sleep=InterruptOnce(clock, at=1), confirm_cancel=lambda q: False)
    with pytest.raises(KeyboardInterrupt):
        run.train(spec_for(train_file))
    (record,) = JobStore(run.trainer.store.path).jobs()
    assert record.status == "pending"
    clock.advance(10.0)
    fresh = run.trainer.refresh(record)
    assert (fresh.status, fresh.output_model) == ("completed", fake.jobs[record.job_id].output_name)
    assert JobStore(run.trainer.store.path).jobs()[0].status == "completed"


def test_interrupts_held_defers_ctrl_c_to_the_end_of_the_block() -> None:
    before = signal.getsignal(signal.SIGINT)
    with interrupts_held() as held:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # the handler runs here, and must not raise
    assert held.caught is True
    assert signal.getsignal(signal.SIGINT) is before


class CtrlCOnCreate(FakeTogether):
    """The fake, with the user pressing Ctrl-C while the job is being created (before the answer arrives)."""

    async def create_job(self, request):
        os.kill(os.getpid(), signal.SIGINT)
        return await super().create_job(request)


def test_ctrl_c_while_creating_still_records_the_job(
    clock: ManualClock, tmp_path: Path, train_file: Path
) -> None:
    asked: list[str] = []
    with CtrlCOnCreate(seconds_per_state=1.0, clock=clock).in_thread() as server:
        run = Trainer(server, clock, tmp_path / "jobs", confirm_cancel=lambda q: asked.append(q) or False)
        with pytest.raises(KeyboardInterrupt):
            run.train(spec_for(train_file))
        (job,) = server.jobs.values()
        assert asked == [f"cancel fine-tune job {job.id}?"]
        assert [r.job_id for r in JobStore(tmp_path / "jobs").jobs()] == [job.id]


def test_a_validation_file_gets_one_evaluation_by_default(fake: FakeTogether, make, train_file: Path) -> None:
    validation = train_file.with_name("valid.jsonl")
    validation.write_text(TRAIN.read_text().splitlines()[0] + "\n")
    make().train(spec_for(train_file, validation_file=validation))
    assert fake.create_bodies[-1]["n_evals"] == 1
    assert fake.create_bodies[-1]["validation_file"].startswith("file-")
