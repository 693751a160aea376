"""Issue 6, property 2: a flaky teacher costs time, never bytes; a permanent error is reported, not retried.

``distill run`` in its own process against the local teacher in another, with the fault mix of the issue: 10%
5xx, 5% malformed bodies (half truncated JSON, half an empty ``choices`` list), connection resets and 0.5% requests
that never answer, which ``--request-timeout`` ends. The teacher's faults are a function of (seed, request,
attempt), so the same mix is replayed on every run of the test.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from support import DISTILL, run_command

from distill.servers.teacher import TeacherKnobs, start_teacher_process

FAULTS = {
    "error_rate": 0.10,
    "truncated_rate": 0.025,
    "empty_rate": 0.025,
    "reset_rate": 0.03,
    "hang_rate": 0.005,
    "seed": 11,
}


@pytest.fixture(scope="module")
def teacher():
    with start_teacher_process(TeacherKnobs()) as server:
        yield server


@pytest.fixture
def fresh(teacher):
    """The module's teacher with its default knobs and zeroed counters."""
    teacher.set_knobs(**TeacherKnobs().to_dict())
    teacher.reset_stats()
    return teacher


def write_dataset(
    path: Path, conversations: int, turns: int, refuse: set[tuple[int, int]] = frozenset()
) -> Path:
    """Multi-turn ``messages`` JSONL; turn (c, t) in ``refuse`` carries the teacher's REFUSE marker."""
    with open(path, "w", encoding="utf-8") as f:
        for c in range(conversations):
            messages = []
            for t in range(turns):
                marker = " REFUSE" if (c, t) in refuse else ""
                messages.append({"role": "user", "content": f"conversation {c}, question {t}{marker}"})
                messages.append({"role": "assistant", "content": "replaced"})
            f.write(json.dumps({"id": f"c{c}", "messages": messages}) + "\n")
    return path


def distill_run(server, data: Path, tmp: Path, name: str, *extra: str, env: dict | None = None):
    args = run_command(server, data, tmp / f"{name}.sqlite", tmp / f"{name}.jsonl", *extra)
    return subprocess.run(args, capture_output=True, text=True, timeout=120, env=env or os.environ)


def test_the_issues_fault_mix_gives_the_same_bytes_as_a_clean_run_and_pays_each_answer_once(tmp_path, fresh):
    data = write_dataset(tmp_path / "in.jsonl", 200, 2)
    clean = distill_run(fresh, data, tmp_path, "clean", "--quiet", "--concurrency", "16")
    assert clean.returncode == 0, clean.stderr

    fresh.set_knobs(**FAULTS)
    fresh.reset_stats()
    began = time.monotonic()
    faulty = distill_run(
        fresh,
        data,
        tmp_path,
        "faulty",
        "--quiet",
        "--concurrency",
        "16",
        "--request-timeout",
        "0.5",
        "--attempts",
        "8",
    )
    elapsed = time.monotonic() - began
    assert faulty.returncode == 0, faulty.stderr
    assert (tmp_path / "faulty.jsonl").read_bytes() == (tmp_path / "clean.jsonl").read_bytes()

    stats = fresh.stats()
    faults = stats["faults"]
    assert faults["server_error"] >= 20 and faults["reset"] >= 4, faults
    assert faults["truncated"] + faults["empty"] >= 10, faults
    assert faults["hang"] >= 1, faults  # ended by --request-timeout, else the run would take an hour
    assert elapsed < 60
    # Every answer the teacher managed to give was received and kept: none was paid for twice.
    assert stats["answered_more_than_once"] == 0
    assert stats["answered"] == stats["distinct_requests"] == 400
    manifest = json.loads((tmp_path / "faulty.jsonl.manifest.json").read_text())
    assert manifest["this_run"]["retries"] == sum(faults.values())
    assert manifest["counts"]["written"] == 200 and manifest["counts"]["failed"] == 0


@pytest.mark.parametrize("status", [400, 422])
def test_a_permanent_error_fails_its_conversation_once_with_the_reason(tmp_path, fresh, status):
    # conversation 3 is refused at its second turn, conversation 7 at its first
    data = write_dataset(tmp_path / "in.jsonl", 10, 2, refuse={(3, 1), (7, 0)})
    fresh.set_knobs(permanent_marker="REFUSE", permanent_status=status)
    result = distill_run(fresh, data, tmp_path, "out", "--attempts", "6")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    for conv, line in (("c3", 4), ("c7", 8)):
        assert f"failed {conv} (in.jsonl:{line}): {status} from the teacher" in result.stderr
    assert "refused for good" in result.stderr  # the server's own reason is passed on
    assert "--retry-failed" in result.stderr

    stats = fresh.stats()
    assert stats["faults"]["permanent"] == 2  # each refused request was sent once: no retry
    assert max(stats["received_by_hash"].values()) == 1
    written = [
        json.loads(line)["messages"][1]["content"]
        for line in (tmp_path / "out.jsonl").read_text().splitlines()
    ]
    assert len(written) == 8 and not any("question 0 REFUSE" in w for w in written)
    manifest = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())
    failures = {f["id"]: f for f in manifest["this_run"]["failures"]}
    assert set(failures) == {"c3", "c7"}
    assert all(str(status) in f["reason"] for f in failures.values())
    assert manifest["counts"]["failed"] == 2

    if status != 422:
        return
    # The failure is remembered: the same command does not pay for it again.
    again = distill_run(fresh, data, tmp_path, "out")
    assert again.returncode == 1
    assert fresh.stats()["requests"] == stats["requests"]


def test_a_401_stops_the_run_at_once_records_nothing_and_the_fixed_key_resumes(tmp_path, fresh):
    data = write_dataset(tmp_path / "in.jsonl", 100, 2)
    fresh.set_knobs(api_key="the-right-key")
    env = {**os.environ, "MY_TEACHER_KEY": "a-revoked-key"}
    began = time.monotonic()
    result = distill_run(
        fresh, data, tmp_path, "out", "--concurrency", "4", "--api-key-env", "MY_TEACHER_KEY", env=env
    )
    assert time.monotonic() - began < 10
    assert result.returncode == 2, result.stderr
    assert "401" in result.stderr and "--api-key-env" in result.stderr
    assert "Traceback" not in result.stderr and "a-revoked-key" not in result.stderr
    assert fresh.stats()["unauthorized"] <= 4  # the first wave, and not one request more
    assert not (tmp_path / "out.jsonl").exists()
    con = sqlite3.connect(tmp_path / "out.sqlite")
    assert (
        con.execute("SELECT count(*) FROM failures").fetchone()[0] == 0
    )  # a bad key is not the requests' fault
    con.close()

    env["MY_TEACHER_KEY"] = "the-right-key"
    fixed = distill_run(fresh, data, tmp_path, "out", "--quiet", "--api-key-env", "MY_TEACHER_KEY", env=env)
    assert fixed.returncode == 0, fixed.stderr
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 100


def test_a_key_revoked_mid_run_stops_it_and_keeps_what_was_answered(tmp_path, fresh):
    data = write_dataset(tmp_path / "in.jsonl", 150, 2)
    fresh.set_knobs(api_key="old-key", latency=0.005)
    env = {**os.environ, "TOGETHER_API_KEY": "old-key"}
    args = [*DISTILL, "run", str(data), "--model", "teacher", "--base-url", fresh.base_url, "--quiet"]
    args += [
        "--concurrency",
        "4",
        "--cache",
        str(tmp_path / "c.sqlite"),
        "--output",
        str(tmp_path / "o.jsonl"),
    ]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
    while fresh.stats(with_hashes=False)["answered"] < 100:
        assert proc.poll() is None
        time.sleep(0.01)
    fresh.set_knobs(api_key="new-key")
    revoked_at = time.monotonic()
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - revoked_at < 10
    assert proc.returncode == 2 and "401" in err and "TOGETHER_API_KEY" in err
    assert fresh.stats(with_hashes=False)["unauthorized"] <= 4
    answered_before = fresh.stats()["answered_by_hash"]

    fresh.reset_stats()
    env["TOGETHER_API_KEY"] = "new-key"
    fixed = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert fixed.returncode == 0, fixed.stderr
    resent = set(fresh.stats()["received_by_hash"]) & set(answered_before)
    assert len(resent) <= 4  # at most the answers in flight when the 401s arrived
    assert fresh.stats(with_hashes=False)["requests"] <= 300 - len(answered_before) + 4
