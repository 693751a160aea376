"""``distill deploy`` and ``distill eval --deploy`` as processes, through the real SDK against the fake: a
``kill -9`` mid-evaluation leaves a record that ``distill deploy --cleanup`` (or the next evaluation) acts on, and
SIGTERM tears the endpoint down before the process exits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from distill.cli.demo import data_path
from distill.servers.together import FakeTogether
from tests.support import DISTILL

TURBO = "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo"
COQA_DEV = data_path("coqa_dev_sample.json")


@pytest.fixture
def fake() -> Iterator[FakeTogether]:
    with FakeTogether(seconds_per_state=0.05, inference_seconds=0.15).in_thread() as server:
        yield server


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "TOGETHER_API_KEY": "test-key",
        "TOGETHER_PROJECT_ID": "proj-cli",
        "DISTILL_JOBS_DB": str(tmp_path / "jobs.sqlite3"),
        "PYTHONPATH": os.pathsep.join(sys.path),
    }


def distill(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DISTILL, *argv], capture_output=True, text=True, timeout=120, env=env)


def eval_deploy(fake: FakeTogether, tmp_path: Path, *extra: str) -> list[str]:
    return [*DISTILL, "eval", "--task", "coqa", "--input", str(COQA_DEV), "--deploy", "--model", TURBO,
            "--together-url", fake.url, "--deploy-poll-interval", "0.05", "--concurrency", "1",
            "--cache", str(tmp_path / "eval-cache.sqlite"), *extra]  # fmt: skip


def answered(fake: FakeTogether) -> int:
    return fake.count("POST", "/v1/chat/completions")


def start_and_wait_for_answers(
    argv: list[str], env: dict[str, str], fake: FakeTogether, n: int
) -> subprocess.Popen:
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while answered(fake) < n:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the evaluation never reached the endpoint"
        time.sleep(0.02)
    return process


def running(fake: FakeTogether) -> list[str]:
    return [d.name for d in fake.endpoint_state.running()]


def test_deploy_prints_the_name_and_status_stop_delete_act_on_it(fake, env, tmp_path):
    done = distill(env, "deploy", "--model", TURBO, "--together-url", fake.url, "--deploy-poll-interval", "0.05",
                   "--hardware", "1xnvidia-h100-80gb", "--max-replicas", "2", "--inactive-timeout", "60")  # fmt: skip
    assert done.returncode == 0, done.stderr
    name = done.stdout.strip()
    assert name.startswith("proj-cli/distill-meta-llama-3-1-8b-instruct-turbo-")
    (deployment,) = fake.endpoint_state.deployments.values()
    assert (deployment.hardware, deployment.min_replicas, deployment.max_replicas) == (
        "1xnvidia-h100-80gb",
        1,
        2,
    )
    assert deployment.inactive_timeout == 60
    status = distill(env, "deploy", "--status", "--together-url", fake.url)
    assert name in status.stdout and "ready" in status.stdout
    stopped = distill(env, "deploy", "--stop", name, "--together-url", fake.url)
    assert stopped.returncode == 0, stopped.stderr
    time.sleep(0.1)
    assert running(fake) == []
    deleted = distill(env, "deploy", "--delete", name.split("/", 1)[1], "--together-url", fake.url)
    assert deleted.returncode == 0 and "stopped and deleted" in deleted.stderr
    assert fake.endpoint_state.endpoints == {}


def test_a_reference_base_is_refused_with_what_to_do_instead(fake, env):
    done = distill(env, "deploy", "--model", "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference",
                   "--together-url", fake.url)  # fmt: skip
    assert done.returncode == 2
    assert "Together cannot deploy" in done.stderr and "Meta-Llama-3.1-8B-Instruct-Turbo" in done.stderr


@pytest.mark.slow
def test_kill_9_mid_evaluation_then_cleanup_leaves_nothing_running(fake, env, tmp_path):
    process = start_and_wait_for_answers(eval_deploy(fake, tmp_path), env, fake, 3)
    process.kill()
    process.wait()
    assert len(running(fake)) == 1  # the killed evaluation could not tear it down
    status = distill(env, "deploy", "--status", "--together-url", fake.url)
    assert "ready" in status.stdout
    cleaned = distill(env, "deploy", "--cleanup", "--together-url", fake.url)
    assert cleaned.returncode == 0 and "1 endpoint(s) stopped and deleted" in cleaned.stdout, cleaned.stderr
    assert fake.endpoint_state.endpoints == {} and fake.endpoint_state.deployments == {}


@pytest.mark.slow
def test_the_next_evaluation_deletes_what_a_killed_one_left_and_resumes_from_its_cache(fake, env, tmp_path):
    process = start_and_wait_for_answers(eval_deploy(fake, tmp_path), env, fake, 5)
    process.kill()
    process.wait()
    before = answered(fake)
    report = tmp_path / "tuned.json"
    done = subprocess.run(eval_deploy(fake, tmp_path, "--report", str(report)), env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "was left running by eval" in done.stderr
    assert fake.endpoint_state.endpoints == {}
    assert answered(fake) - before < 12  # answers cached before the kill were not asked again
    usage = json.loads(report.read_text())["endpoint"]
    assert usage["billed_replica_minutes"] == 1 and usage["estimated_cost_usd"] > 0
    assert "replica-minutes billed" in done.stderr


@pytest.mark.slow
def test_sigterm_mid_evaluation_tears_the_endpoint_down(fake, env, tmp_path):
    process = start_and_wait_for_answers(eval_deploy(fake, tmp_path), env, fake, 2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "stopped and deleted" in stderr
    assert fake.endpoint_state.endpoints == {}
