"""The ``distill`` command as a user runs it: real processes, a teacher in its own process, real signals."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from support import DISTILL, run_command, write_multi_turn

from distill.servers.teacher import TeacherKnobs, start_teacher_process


@pytest.fixture(scope="module")
def slow_teacher():
    with start_teacher_process(TeacherKnobs(latency=0.03)) as server:
        yield server


@pytest.fixture(scope="module")
def fast_teacher():
    with start_teacher_process(TeacherKnobs()) as server:
        yield server


def distill(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*DISTILL, *args], capture_output=True, text=True, env=env or os.environ, timeout=120, **kw
    )


def run_args(server, input_path: Path, tmp: Path, name: str = "out", *extra: str) -> list[str]:
    """``distill run``'s arguments (without the interpreter) against ``server``, quiet."""
    cache, output = tmp / f"{name}.sqlite", tmp / f"{name}.jsonl"
    return run_command(server, input_path, cache, output, "--quiet", *extra)[len(DISTILL) :]


def test_run_then_export_and_stats_from_the_cache_alone(tmp_path, fast_teacher, sharegpt_60):
    done = distill(*run_args(fast_teacher, sharegpt_60, tmp_path, "out", "--output-format", "llama2"))
    assert done.returncode == 0, done.stderr
    exported = distill(
        "export",
        "--cache",
        str(tmp_path / "out.sqlite"),
        "--output",
        str(tmp_path / "e.jsonl"),
        "--output-format",
        "llama2",
    )
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "e.jsonl").read_bytes() == (tmp_path / "out.jsonl").read_bytes()
    stats = distill("stats", "--cache", str(tmp_path / "out.sqlite"), "--json")
    data = json.loads(stats.stdout)
    assert data["runs"][0]["conversations"] == data["runs"][0]["finished"] == 60
    assert data["responses"] == 41  # the sample repeats itself
    manifest = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())
    assert manifest["counts"]["written"] == 60 and manifest["model"] == "teacher"
    assert manifest["output"]["sha256"] and manifest["cache"].endswith("out.sqlite")


def wait_until_received(server, requests: int, timeout: float = 60.0) -> None:
    """Return once ``server`` has received ``requests`` requests in all (a later group commit has then saved some)."""
    deadline = time.monotonic() + timeout
    while server.stats(with_hashes=False)["requests"] < requests:
        assert time.monotonic() < deadline, f"the teacher never received {requests} requests"
        time.sleep(0.02)
    time.sleep(0.1)


def test_resume_after_sigkill_writes_the_same_bytes_and_pays_once(tmp_path, slow_teacher):
    data = write_multi_turn(tmp_path / "in.jsonl", 150, 3)  # 450 requests, about 3.5 s at 4 in flight
    clean = distill(*run_args(slow_teacher, data, tmp_path, "clean", "--concurrency", "4"))
    assert clean.returncode == 0, clean.stderr
    slow_teacher.reset_stats()
    args = run_args(slow_teacher, data, tmp_path, "killed", "--concurrency", "4")
    for answered in (60, 160, 260):  # killed mid-run by progress at the teacher, not by the clock: load-proof
        proc = subprocess.Popen([*DISTILL, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until_received(slow_teacher, answered)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
    resumed = distill(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "killed.jsonl.manifest.json").read_text())["this_run"]["cache_hits"] > 0
    assert (tmp_path / "killed.jsonl").read_bytes() == (tmp_path / "clean.jsonl").read_bytes()
    received = slow_teacher.stats()["received_by_hash"]
    resent = [h for h, n in received.items() if n > 1]
    # At most what was in flight at each kill (4), plus answers not yet committed: those inside the 20 ms group
    # commit window (~3 at 130/s) and one commit under way in the writer process (~3 more).
    assert len(resent) <= 3 * (4 + 6)


def test_sigint_and_sigterm_stop_cleanly_and_say_how_to_resume(tmp_path, slow_teacher):
    data = write_multi_turn(tmp_path / "in.jsonl", 100, 2)
    args = run_args(slow_teacher, data, tmp_path, "sig", "--concurrency", "2")
    for sig in (signal.SIGINT, signal.SIGTERM):
        proc = subprocess.Popen([*DISTILL, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.8)
        began = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=15)
        assert time.monotonic() - began < 10
        assert proc.returncode == 130, err
        assert "run the same command again to resume" in err
        con = sqlite3.connect(tmp_path / "sig.sqlite")
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        con.close()
    assert distill(*args).returncode == 0


def test_usage_errors_exit_2_with_a_fix_it_message(tmp_path, fast_teacher, sharegpt_60):
    no_model = distill("run", str(sharegpt_60), "--base-url", fast_teacher.base_url)
    assert no_model.returncode == 2 and "--model" in no_model.stderr
    bad_dir = distill(
        *run_args(fast_teacher, sharegpt_60, tmp_path), "--output", str(tmp_path / "no/such/dir.jsonl")
    )
    assert bad_dir.returncode == 2 and "--output" in bad_dir.stderr
    bad_format = distill(*run_args(fast_teacher, sharegpt_60, tmp_path), "--output-format", "nope")
    assert bad_format.returncode == 2 and "--output-format" in bad_format.stderr


def test_nothing_is_paid_for_when_the_output_cannot_be_written(tmp_path, sharegpt_60):
    with start_teacher_process(TeacherKnobs()) as server:
        (tmp_path / "out.jsonl").mkdir()
        result = distill(*run_args(server, sharegpt_60, tmp_path))
        assert result.returncode == 2 and "--output" in result.stderr
        assert server.stats(with_hashes=False)["requests"] == 0


def test_a_foreign_or_corrupt_cache_is_refused_not_overwritten(tmp_path, fast_teacher, sharegpt_60):
    foreign = tmp_path / "out.sqlite"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE mine (x)")
    con.commit()
    con.close()
    before = foreign.read_bytes()
    result = distill(*run_args(fast_teacher, sharegpt_60, tmp_path))
    assert result.returncode == 2 and "not a distill cache" in result.stderr
    assert foreign.read_bytes() == before
    foreign.write_bytes(b"this is not a database at all" * 10)
    result = distill(*run_args(fast_teacher, sharegpt_60, tmp_path))
    assert result.returncode == 2 and "not a SQLite database" in result.stderr


def test_a_second_run_on_the_same_cache_refuses_while_the_first_runs(tmp_path, slow_teacher, sharegpt_60):
    data = write_multi_turn(tmp_path / "in.jsonl", 100, 2)
    args = run_args(slow_teacher, data, tmp_path, "shared", "--concurrency", "1")
    first = subprocess.Popen([*DISTILL, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.8)
        second = distill(
            *run_args(slow_teacher, sharegpt_60, tmp_path, "shared"), "--output", str(tmp_path / "2.jsonl")
        )
        assert second.returncode == 2 and "in use by another distill run" in second.stderr
    finally:
        first.kill()
        first.wait()


def test_a_401_exits_2_naming_the_key_variable(tmp_path, sharegpt_60):
    with start_teacher_process(TeacherKnobs(api_key="right")) as server:
        env = {**os.environ, "TOGETHER_API_KEY": "wrong"}
        result = distill(*run_args(server, sharegpt_60, tmp_path), env=env)
        assert result.returncode == 2
        assert "TOGETHER_API_KEY" in result.stderr and "wrong" not in result.stderr
        assert server.stats(with_hashes=False)["requests"] <= 64
