"""``distill train`` end to end against the local Together fake: output, exit codes, --status, Ctrl-C."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import distill.cli
from distill.servers.together import FakeTogether
from trainers.jobs import JobStore

ROOT = Path(__file__).parent.parent
TRAIN = ROOT / "tests" / "fixtures" / "trainers" / "small_coqa_3.jsonl"
MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
TOGETHER_KEY = "together-cli-secret-0003"
WANDB_KEY = "wandb-cli-secret-0004"
# The sub-commands may not be registered in distill.cli.COMMANDS yet: register them for the test's process.
LAUNCH = (
    "import sys, distill.cli as c; c.COMMANDS = tuple(dict.fromkeys(c.COMMANDS + ('train', 'eval'))); "
    "sys.exit(c.main(sys.argv[1:]))"
)


@pytest.fixture(autouse=True)
def commands(monkeypatch) -> None:
    monkeypatch.setattr(
        distill.cli, "COMMANDS", tuple(dict.fromkeys((*distill.cli.COMMANDS, "train", "eval")))
    )
    monkeypatch.setenv("TOGETHER_API_KEY", TOGETHER_KEY)
    monkeypatch.delenv("TOGETHER_BASE_URL", raising=False)
    monkeypatch.delenv("DISTILL_MODEL", raising=False)


@pytest.fixture
def fake() -> Iterator[FakeTogether]:
    with FakeTogether(seconds_per_state=0.05, error_models={"org/broken"}).in_thread() as server:
        yield server


@pytest.fixture
def jobs(tmp_path: Path) -> Path:
    return tmp_path / "jobs.sqlite3"


def train_args(fake: FakeTogether, jobs: Path, *extra: str, poll: str = "0.02") -> list[str]:
    return ["train", "--file", str(TRAIN), "--model", MODEL, "--base-url", fake.url, "--jobs-db", str(jobs),
            "--poll-interval", poll, *extra]  # fmt: skip


def test_train_prints_the_model_and_a_rerun_reattaches(fake: FakeTogether, jobs: Path, capsys) -> None:
    assert distill.cli.main(train_args(fake, jobs, "--suffix", "cli")) == 0
    first = capsys.readouterr()
    (job,) = fake.jobs.values()
    assert first.out == f"{job.output_name}\n"
    assert f"job {job.id}: completed" in first.err
    assert distill.cli.main(train_args(fake, jobs, "--suffix", "cli")) == 0
    second = capsys.readouterr()
    assert second.out == first.out
    assert "already ran as job" in second.err
    assert (fake.count("POST", "/v1/files"), fake.count("POST", "/v1/fine-tunes")) == (1, 1)


def test_quiet_prints_only_the_model(fake: FakeTogether, jobs: Path, capsys) -> None:
    assert distill.cli.main(train_args(fake, jobs, "--quiet")) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out.startswith("fake-user/")


def test_flags_reach_the_job(fake: FakeTogether, jobs: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_FOR_TEST", WANDB_KEY)
    argv = train_args(fake, jobs, "--full", "--n-epochs", "2", "--batch-size", "8", "--learning-rate", "3e-5",
                      "--warmup-ratio", "0.2", "--train-on-inputs", "true", "--wandb-key-env", "WANDB_FOR_TEST")  # fmt: skip
    assert distill.cli.main(argv) == 0
    body = fake.create_bodies[-1]
    assert body["training_type"] == {"type": "Full"}
    assert (body["n_epochs"], body["batch_size"], body["learning_rate"], body["warmup_ratio"]) == (
        2,
        8,
        3e-5,
        0.2,
    )
    assert body["training_method"]["train_on_inputs"] is True
    assert body["wandb_key"] == WANDB_KEY
    captured = capsys.readouterr()
    written = captured.out + captured.err + jobs.read_bytes().decode("utf-8", "replace")
    assert WANDB_KEY not in written and TOGETHER_KEY not in written


def test_lora_rank_sets_alpha_to_twice_the_rank(fake: FakeTogether, jobs: Path) -> None:
    assert distill.cli.main(train_args(fake, jobs, "--lora-r", "16")) == 0
    assert fake.create_bodies[-1]["training_type"]["lora_alpha"] == 32


def test_a_failed_job_exits_1_with_the_reason(fake: FakeTogether, jobs: Path, capsys) -> None:
    argv = train_args(fake, jobs)
    argv[argv.index(MODEL)] = "org/broken"
    assert distill.cli.main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "ended error (Training failed (simulated by the fake))" in captured.err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--lora", "--full"], "--lora and --full contradict each other"),
        (["--batch-size", "big"], "--batch-size takes an integer or max"),
        (["--n-epochs", "0"], "--n-epochs must be at least 1"),
        (["--train-on-inputs", "boilerplate"], "not supported by Together"),
        (["--backend", "nope"], "unknown trainer back-end 'nope' for --backend"),
    ],
)
def test_bad_flags_exit_2(fake: FakeTogether, jobs: Path, capsys, extra: list[str], message: str) -> None:
    assert distill.cli.main(train_args(fake, jobs, *extra)) == 2
    assert message in capsys.readouterr().err
    assert fake.count("POST", "/v1/fine-tunes") == 0


def test_the_teacher_model_in_the_environment_is_not_the_base_model(jobs: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("DISTILL_MODEL", "some/teacher-70b")
    assert distill.cli.main(["train", "--file", str(TRAIN), "--jobs-db", str(jobs)]) == 2
    assert "no base model: pass --model" in capsys.readouterr().err


def test_status_lists_recorded_jobs(fake: FakeTogether, jobs: Path, capsys) -> None:
    assert distill.cli.main(["train", "--status", "--jobs-db", str(jobs)]) == 0
    assert capsys.readouterr().out == "no recorded jobs\n"
    distill.cli.main(train_args(fake, jobs, "--quiet"))
    capsys.readouterr()
    assert distill.cli.main(["train", "--status", "--jobs-db", str(jobs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    (job,) = fake.jobs.values()
    assert lines[0].split() == [
        "JOB",
        "BACKEND",
        "STATUS",
        "BASE",
        "MODEL",
        "FINE-TUNED",
        "MODEL",
        "FILE",
        "STARTED",
    ]
    assert lines[1].split()[:5] == [job.id, "together", "completed", MODEL, job.output_name]


def test_status_refreshes_unfinished_jobs(fake: FakeTogether, jobs: Path, capsys) -> None:
    distill.cli.main(train_args(fake, jobs, "--quiet"))
    (record,) = JobStore(jobs).jobs()
    JobStore(jobs).update_job(record.base_url, record.job_id, "running", None)  # as if followed no further
    assert distill.cli.main(["train", "--status", "--jobs-db", str(jobs)]) == 0
    assert " completed " in capsys.readouterr().out
    assert JobStore(jobs).jobs()[0].status == "completed"


# Ctrl-C in a real process: SIGINT while the job is being followed.


def start_cli(argv: list[str], stdin) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCH, *argv],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "TOGETHER_API_KEY": TOGETHER_KEY, "PYTHONPATH": str(ROOT)},
    )


def wait_for_job(jobs: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while not (jobs.exists() and JobStore(jobs).jobs()):
        assert process.poll() is None, process.communicate()[1].decode()
        assert time.monotonic() < deadline, "the job was never recorded"
        time.sleep(0.05)


@pytest.fixture
def slow_fake() -> Iterator[FakeTogether]:
    with FakeTogether(seconds_per_state=1.5).in_thread() as server:
        yield server


def test_ctrl_c_without_a_terminal_leaves_the_job_running(slow_fake: FakeTogether, jobs: Path) -> None:
    process = start_cli(train_args(slow_fake, jobs, poll="0.1"), subprocess.DEVNULL)
    wait_for_job(jobs, process)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err.decode()
    assert out == b""
    assert b"is still running on Together; run the same distill train command again" in err
    (job,) = slow_fake.jobs.values()
    assert slow_fake.count("POST", f"/v1/fine-tunes/{job.id}/cancel") == 0
    again = start_cli(train_args(slow_fake, jobs, poll="0.1"), subprocess.DEVNULL)
    out, err = again.communicate(timeout=30)
    assert again.returncode == 0, err.decode()
    assert out.decode().strip() == job.output_name
    assert (slow_fake.count("POST", "/v1/files"), slow_fake.count("POST", "/v1/fine-tunes")) == (1, 1)
    assert TOGETHER_KEY.encode() not in out + err


def test_ctrl_c_on_a_terminal_asks_and_cancels(slow_fake: FakeTogether, jobs: Path) -> None:
    controller, terminal = pty.openpty()
    try:
        process = start_cli(train_args(slow_fake, jobs, poll="0.1"), terminal)
        wait_for_job(jobs, process)
        process.send_signal(signal.SIGINT)
        os.write(controller, b"y\n")
        out, err = process.communicate(timeout=30)
    finally:
        os.close(terminal)
        os.close(controller)
    (job,) = slow_fake.jobs.values()
    assert f"cancel fine-tune job {job.id}? [y/N]".encode() in out
    assert process.returncode == 1, err.decode()
    assert f"job {job.id} ended cancelled".encode() in err
    assert job.status == "cancelled"
