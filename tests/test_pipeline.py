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
    config.write_text("[run]\n[train]\n[eval]\n[deploy]\n")
    with pytest.raises(ConfigError, match="deploy"):
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
    assert again == summary
    report = json.loads((tmp_path / "pipeline" / "report.json").read_text())
    assert report["dataset"]["conversations"] == 5 and len(report["dataset"]["sha256"]) == 64
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
