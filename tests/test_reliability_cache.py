"""Issue 6, property 5: the cache is never corrupted, never overwritten, and nothing is paid for a run that cannot
finish writing.

Two ``distill run`` processes started on one cache at the same instant: one runs, the other refuses at once and
touches nothing. A damaged, truncated, foreign or newer cache file is reported and left byte for byte as it was,
by ``run``, ``export`` and ``stats``. Every path a run writes (output, rejects, manifest, cache) is checked before
the first request.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distill.servers.teacher import TeacherKnobs, start_teacher_process

DISTILL = [sys.executable, "-m", "distill"]


@pytest.fixture(scope="module")
def teacher():
    with start_teacher_process(TeacherKnobs()) as server:
        yield server


def write_dataset(path: Path, conversations: int, bad_first: bool = False) -> Path:
    lines = ["null"] if bad_first else []
    lines += [
        json.dumps({"id": f"c{c}", "messages": [{"role": "user", "content": f"question {c}"}]})
        for c in range(conversations)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_args(server, data: Path, cache: Path, output: Path, *extra: str) -> list[str]:
    return [*DISTILL, "run", str(data), "--model", "teacher", "--base-url", server.base_url, "--quiet"] + [
        "--format",
        "messages",
        "--cache",
        str(cache),
        "--output",
        str(output),
        *extra,
    ]


def distill(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*DISTILL, *args], capture_output=True, text=True, timeout=120)


def integrity(cache: Path) -> str:
    con = sqlite3.connect(f"file:{cache}?mode=ro", uri=True)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def settled_cache(server, tmp: Path) -> Path:
    """A finished run's cache, checkpointed so that the main file holds everything (the -wal beside it is empty)."""
    data = write_dataset(tmp / "in.jsonl", 120)
    cache = tmp / "cache.sqlite"
    done = subprocess.run(run_args(server, data, cache, tmp / "first.jsonl"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    con = sqlite3.connect(cache)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return cache


def test_two_runs_started_at_once_on_one_cache_one_runs_and_the_other_refuses(tmp_path, teacher):
    teacher.set_knobs(latency=0.04)  # 1.2 s of answers: the two start well within that of each other
    try:
        data = write_dataset(tmp_path / "in.jsonl", 60, bad_first=True)
        cache, output = tmp_path / "shared.sqlite", tmp_path / "out.jsonl"
        args = run_args(teacher, data, cache, output, "--concurrency", "2")
        both = [subprocess.Popen(args, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        results = [(p.wait(timeout=60), p.stderr.read()) for p in both]
    finally:
        teacher.set_knobs(latency=0.0)
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refusal = next(err for code, err in results if code == 2)
    assert "in use by another distill run" in refusal and "--cache" in refusal and "Traceback" not in refusal
    assert integrity(cache) == "ok"
    written = output.read_bytes()
    assert len(written.splitlines()) == 60
    # The refused run deleted nothing of the winner's: its rejects file is whole.
    rejects = [json.loads(line) for line in (tmp_path / "out.jsonl.rejects.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rejects] == ["in.jsonl:1"]

    sent = teacher.stats(with_hashes=False)["requests"]
    again = subprocess.run(args, capture_output=True, text=True)
    assert again.returncode == 0 and output.read_bytes() == written
    assert teacher.stats(with_hashes=False)["requests"] == sent  # all of it came from the shared cache


def test_the_loser_of_a_race_leaves_the_running_runs_rejects_file_alone(tmp_path, teacher):
    teacher.set_knobs(latency=0.1)  # 6 s of answers: time for the second to start and be refused
    try:
        data = write_dataset(tmp_path / "in.jsonl", 60, bad_first=True)
        cache, output = tmp_path / "shared.sqlite", tmp_path / "out.jsonl"
        args = run_args(teacher, data, cache, output, "--concurrency", "1")
        teacher.reset_stats()
        first = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
        while (
            teacher.stats(with_hashes=False)["answered"] < 5
        ):  # the first run holds the lock and has a reject
            assert first.poll() is None
            time.sleep(0.01)
        second = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and "in use by another distill run" in second.stderr
        assert first.wait(timeout=60) == 0, first.stderr.read()
    finally:
        teacher.set_knobs(latency=0.0)
    assert (tmp_path / "out.jsonl.rejects.jsonl").read_text().count("\n") == 1


def garble(path: Path) -> None:
    """Overwrite bytes across every page after the first two (the header and schema stay readable)."""
    data = bytearray(path.read_bytes())
    for i in range(8192, len(data), 7):
        data[i] = (data[i] * 31 + 7) % 256
    path.write_bytes(bytes(data))


def test_a_damaged_cache_is_reported_by_run_export_and_stats_and_left_as_it_was(tmp_path, teacher):
    cache = settled_cache(teacher, tmp_path)
    garble(cache)
    before = cache.read_bytes()
    teacher.reset_stats()
    data = write_dataset(tmp_path / "more.jsonl", 10)
    commands = {
        "run": run_args(teacher, data, cache, tmp_path / "out.jsonl")[len(DISTILL) :],
        "export": ["export", "--cache", str(cache), "--output", str(tmp_path / "export.jsonl")],
        "stats": ["stats", "--cache", str(cache)],
    }
    for name, args in commands.items():
        result = distill(*args)
        assert result.returncode == 2, (name, result.stderr)
        assert "Traceback" not in result.stderr, name
        assert "malformed" in result.stderr and "--cache" in result.stderr, (name, result.stderr)
        assert cache.read_bytes() == before, name
    assert teacher.stats(with_hashes=False)["requests"] == 0


def test_a_truncated_newer_or_mistaken_cache_file_is_refused_and_left_as_it_was(tmp_path, teacher):
    data = write_dataset(tmp_path / "in.jsonl", 10)
    cache = settled_cache(teacher, tmp_path)
    newer = tmp_path / "newer.sqlite"
    newer.write_bytes(cache.read_bytes())
    con = sqlite3.connect(newer)
    con.execute("PRAGMA user_version = 99")
    con.close()
    truncated = tmp_path / "truncated.sqlite"
    truncated.write_bytes(cache.read_bytes()[: len(cache.read_bytes()) // 2])
    cases = {
        truncated: "corrupt",
        newer: "newer distill",
        data: "not a SQLite database",  # the dataset passed as --cache by mistake
    }
    teacher.reset_stats()
    for path, message in cases.items():
        before = path.read_bytes()
        result = subprocess.run(
            run_args(teacher, data, path, tmp_path / "out.jsonl"), capture_output=True, text=True
        )
        assert result.returncode == 2 and message in result.stderr, (path.name, result.stderr)
        assert "Traceback" not in result.stderr
        assert path.read_bytes() == before, path.name
    assert teacher.stats(with_hashes=False)["requests"] == 0


def test_every_unwritable_path_fails_before_the_first_request(tmp_path, teacher):
    data = write_dataset(tmp_path / "in.jsonl", 10)
    (tmp_path / "a_file").write_text("not a directory")
    for name in ("out.jsonl.rejects.jsonl", "out.jsonl.manifest.json", "cache_dir"):
        (tmp_path / name).mkdir()
    good_cache, good_output = tmp_path / "c.sqlite", tmp_path / "out.jsonl"
    cases = {
        "output under a file": (good_cache, tmp_path / "a_file" / "out.jsonl", "--output"),
        "output is a directory": (good_cache, tmp_path / "cache_dir", "--output"),
        "rejects path is a directory": (good_cache, good_output, "--output"),
        "cache is a directory": (tmp_path / "cache_dir", tmp_path / "other.jsonl", "--cache"),
        "cache under a file": (tmp_path / "a_file" / "c.sqlite", tmp_path / "other.jsonl", "--cache"),
    }
    teacher.reset_stats()
    for case, (cache, output, flag) in cases.items():
        result = subprocess.run(run_args(teacher, data, cache, output), capture_output=True, text=True)
        assert result.returncode == 2, (case, result.stderr)
        assert flag in result.stderr and "Traceback" not in result.stderr, (case, result.stderr)
    (tmp_path / "out.jsonl.rejects.jsonl").rmdir()
    result = subprocess.run(run_args(teacher, data, good_cache, good_output), capture_output=True, text=True)
    assert result.returncode == 2 and "manifest" in result.stderr, result.stderr
    assert teacher.stats(with_hashes=False)["requests"] == 0
