"""The record of uploads and jobs (``trainers.jobs``): where it lives, what it keeps, what it refuses."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from distill.errors import CacheError, UsageError
from trainers.jobs import JobRecord, JobStore, UploadRecord, default_jobs_path, file_sha256, request_key


def job(job_id: str, key: str = "k", created_at: float = 1.0, status: str = "pending") -> JobRecord:
    return JobRecord(job_id, "http://api", "together", key, "m", "/data/train.jsonl", "abc", {"n_epochs": 1},
                     status, None, created_at, created_at)  # fmt: skip


def test_default_path_follows_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DISTILL_JOBS_DB", str(tmp_path / "explicit.sqlite3"))
    assert default_jobs_path() == tmp_path / "explicit.sqlite3"
    monkeypatch.delenv("DISTILL_JOBS_DB")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_jobs_path() == tmp_path / "state" / "distill" / "jobs.sqlite3"


def test_file_sha256_and_request_key(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"hello\n")
    assert file_sha256(path) == hashlib.sha256(b"hello\n").hexdigest()
    assert request_key({"a": 1, "b": [2]}) == request_key({"b": [2], "a": 1})
    assert request_key({"a": 1}) != request_key({"a": 2})
    with pytest.raises(UsageError, match="cannot read"):
        file_sha256(tmp_path / "missing.jsonl")


def test_jobs_and_uploads_round_trip(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "deep" / "jobs.sqlite3")
    assert store.jobs() == [] and not store.path.exists()  # listing creates nothing
    store.record_job(job("ft-1", created_at=1.0))
    store.record_job(job("ft-2", created_at=2.0))
    assert store.latest_job("http://api", "k").job_id == "ft-2"
    assert store.latest_job("http://other", "k") is None
    store.update_job("http://api", "ft-2", "completed", "user/m-x")
    store.update_job("http://api", "ft-2", "completed", None)  # a later poll without the name keeps it
    latest = store.latest_job("http://api", "k")
    assert (latest.status, latest.output_model, latest.finished) == ("completed", "user/m-x", True)
    assert latest.options == {"n_epochs": 1}
    upload = UploadRecord("http://api", "abc", "fine-tune", "file-1", "train.jsonl", 10, "COMPLETED", 1.0)
    store.record_upload(upload)
    assert store.find_upload("http://api", "abc", "fine-tune") == upload
    store.forget_upload("http://api", "abc", "fine-tune")
    assert store.find_upload("http://api", "abc", "fine-tune") is None


def test_a_foreign_or_newer_database_is_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(CacheError, match="pass --jobs-db PATH"):
        JobStore(garbage).jobs()
    newer = tmp_path / "newer.sqlite3"
    JobStore(newer).record_job(job("ft-1"))
    with sqlite3.connect(newer) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(CacheError, match="written by a newer distill"):
        JobStore(newer).jobs()
