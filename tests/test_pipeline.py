"""``distill pipeline`` and ``distill demo``: distil -> check -> train -> evaluate, offline, through real servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from distill.cli.demo import pipeline_config
from distill.errors import ConfigError
from distill.pipeline import argv_for, load_config, run_pipeline
from distill.servers.teacher import TeacherKnobs, start_teacher_process
from distill.servers.together import FakeTogether


def test_a_table_becomes_the_commands_flags():
    table = {"model": "m", "n-epochs": 3, "lora": True, "full": False, "stop": ["a", "b"]}
    assert argv_for("train", table) == [
        "train",
        "--model",
        "m",
        "--n-epochs",
        "3",
        "--lora",
        "--stop",
        "a",
        "--stop",
        "b",
    ]


def test_missing_or_unknown_tables_are_config_errors(tmp_path):
    config = tmp_path / "p.toml"
    config.write_text("[run]\n[train]\n")
    with pytest.raises(ConfigError, match=r"\[eval\]"):
        load_config(config)
    config.write_text("[run]\n[train]\n[eval]\n[serve]\n")
    with pytest.raises(ConfigError, match="serve"):
        load_config(config)


def test_the_pipeline_ties_dataset_job_and_scores_together(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TOGETHER_API_KEY", "test-key")
    with (
        start_teacher_process(TeacherKnobs()) as teacher,
        FakeTogether(seconds_per_state=0.05).in_thread() as fake,
    ):
        summary = run_pipeline(pipeline_config(tmp_path, teacher.base_url, fake.url), sys.stderr)
        uploads = fake.count("POST", "/v1/files")
        assert fake.count("POST", "/v1/fine-tunes") == 1
        body = fake.create_bodies[0]
        assert body["training_method"]["train_on_inputs"] == "auto" and body["n_epochs"] == 3
        # Everything is recorded, so the same pipeline again pays for nothing new.
        sent = teacher.stats(with_hashes=False)["requests"]
        again = run_pipeline(pipeline_config(tmp_path, teacher.base_url, fake.url), sys.stderr)
        assert teacher.stats(with_hashes=False)["requests"] == sent
        assert fake.count("POST", "/v1/fine-tunes") == 1 and fake.count("POST", "/v1/files") == uploads
        # The student was served on one endpoint, torn down, and not deployed again for the rerun.
        assert fake.count("POST", "/v2/projects/demo-project/endpoints") == 1
        assert fake.endpoint_state.endpoints == {}
    assert again == summary
    assert summary["endpoint"]["billed_replica_minutes"] == 1
    report = json.loads((tmp_path / "pipeline" / "report.json").read_text())
    assert report["dataset"]["conversations"] == 5 and len(report["dataset"]["sha256"]) == 64
    with open(
        report["dataset"]["path"], encoding="utf-8"
    ) as trained_on:  # messages by default: prompts masked
        assert list(json.loads(trained_on.readline())) == ["messages"]
    assert report["job"]["status"] == "completed" and report["job"]["id"].startswith("ft-")
    assert report["eval"]["base"]["n"] == report["eval"]["tuned"]["n"] == 12
    assert {"em", "f1"} <= set(report["eval"]["tuned"])
    assert (tmp_path / "pipeline" / "eval.tuned.json").exists()
    assert "reference" in (tmp_path / "pipeline" / "report.md").read_text()


def test_the_readme_demo_runs_offline(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TOGETHER_API_KEY"}
    done = subprocess.run(
        [sys.executable, "-m", "distill", "demo", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "second came from the cache" in done.stderr
    for name in ("sample.messages.jsonl", "sample.llama2.jsonl", "coqa.messages.jsonl", "pipeline/report.md"):
        assert (tmp_path / name).stat().st_size > 0
    check = subprocess.run(
        [sys.executable, "-m", "distill", "check", str(tmp_path / "sample.llama2.jsonl")],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    # The pipeline.toml it leaves runs again as it is: its servers are started by the command.
    first = (tmp_path / "pipeline" / "report.json").read_text()
    again = subprocess.run(
        [sys.executable, "-m", "distill", "pipeline", str(tmp_path / "pipeline.toml")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert again.returncode == 0, again.stderr
    rerun = json.loads((tmp_path / "pipeline" / "report.json").read_text())
    # the same data and base scores; the fake Together started afresh knows no earlier job, so it makes a new one
    assert rerun["dataset"] == json.loads(first)["dataset"]
    assert rerun["eval"]["base"] == json.loads(first)["eval"]["base"]


@pytest.mark.slow
def test_a_pipeline_killed_while_its_endpoint_runs_is_finished_by_a_rerun_leaving_no_endpoint(tmp_path):
    import time

    env = {**os.environ, "TOGETHER_API_KEY": "test-key", "PYTHONPATH": os.pathsep.join(sys.path)}
    with (
        start_teacher_process(TeacherKnobs()) as teacher,
        FakeTogether(seconds_per_state=0.05, inference_seconds=0.5).in_thread() as fake,
    ):
        config = pipeline_config(tmp_path, teacher.base_url, fake.url)
        argv = [sys.executable, "-m", "distill", "pipeline", str(config)]
        process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while fake.count("POST", "/v1/chat/completions") == 0:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        process.kill()  # kill -9 in the middle of the student's evaluation
        process.wait()
        assert len(fake.endpoint_state.running()) == 1
        rerun = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180)
        assert rerun.returncode == 0, rerun.stderr
        assert "was left running by pipeline" in rerun.stderr
        assert fake.endpoint_state.endpoints == {} and fake.endpoint_state.deployments == {}
        assert fake.count("POST", "/v1/fine-tunes") == 1  # the rerun re-attached to the finished job
    report = json.loads((tmp_path / "pipeline" / "report.json").read_text())
    assert report["endpoint"]["billed_replica_minutes"] >= 1
    assert report["eval"]["tuned"]["deployed_model"] == report["job"]["model"]
    markdown = (tmp_path / "pipeline" / "report.md").read_text()
    assert "replica-minutes billed" in markdown and "stopped and deleted" in markdown
