"""Issue 6, property 3: SIGINT and SIGTERM stop a run within 10 s, keep the cache whole, say how to resume, and
the resumed run writes the same bytes as an uninterrupted one.

``distill run`` runs in its own process and gets real signals; the teacher runs in another process, so what it
received and answered can be compared with what the cache kept.
"""

from __future__ import annotations

import fcntl
import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import orjson
import pytest
from support import run_command

from distill.requests import TeacherRequest
from distill.servers.teacher import TeacherKnobs, request_hash, start_teacher_process

CONCURRENCY = 8
RESUME_HINT = "run the same command again to resume"


@pytest.fixture(scope="module")
def teacher():
    with start_teacher_process(TeacherKnobs()) as server:
        yield server


def write_dataset(path: Path, conversations: int, turns: int) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for c in range(conversations):
            turns_ = [
                {"from": "human" if t % 2 == 0 else "gpt", "value": f"c{c} turn {t}"}
                for t in range(2 * turns)
            ]
            f.write(json.dumps({"id": f"c{c}", "conversations": turns_}) + "\n")
    return path


def run_args(server, data: Path, tmp: Path, name: str) -> list[str]:
    cache, output = tmp / f"{name}.sqlite", tmp / f"{name}.jsonl"
    return run_command(
        server, data, cache, output, "--concurrency", str(CONCURRENCY), "--request-timeout", "30"
    )


def committed(cache: Path) -> set[str]:
    """The teacher's hashes of the requests the cache holds answers to; fails unless the file is whole."""
    con = sqlite3.connect(f"file:{cache}?mode=ro", uri=True)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = con.execute("SELECT request FROM responses").fetchall()
    finally:
        con.close()
    hashes = set()
    for (row,) in rows:
        ident = orjson.loads(row)
        messages = tuple((m["role"], m["content"]) for m in ident["messages"])
        request = TeacherRequest(
            ident["api"], ident["model"], tuple(ident["params"].items()), messages=messages
        )
        hashes.add(request_hash(orjson.loads(orjson.dumps(request.body()))))
    return hashes


def stop_with(proc: subprocess.Popen, *signals: signal.Signals) -> tuple[float, str]:
    """Send ``signals`` back to back; the seconds until the process exited, and its stderr."""
    began = time.monotonic()
    for sig in signals:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    return time.monotonic() - began, err


@pytest.mark.parametrize(
    "signals",
    [(signal.SIGINT,), (signal.SIGTERM,), (signal.SIGINT, signal.SIGTERM)],
    ids=["SIGINT", "SIGTERM", "SIGINT-then-SIGTERM"],
)
def test_a_signal_stops_the_run_within_10_s_even_when_no_request_ever_answers(tmp_path, teacher, signals):
    teacher.set_knobs(hang_rate=1.0, hang_seconds=3600.0)
    try:
        data = write_dataset(tmp_path / "in.jsonl", 50, 1)
        proc = subprocess.Popen(run_args(teacher, data, tmp_path, "hung"), stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while teacher.stats(with_hashes=False)["in_flight"] < CONCURRENCY and time.monotonic() < deadline:
            time.sleep(0.02)
        took, err = stop_with(proc, *signals)
    finally:
        teacher.set_knobs(hang_rate=0.0)
    assert took < 10
    assert proc.returncode == 130, err
    assert RESUME_HINT in err and any(f"stopped by {sig.name}" in err for sig in signals)
    assert "Traceback" not in err
    assert committed(tmp_path / "hung.sqlite") == set()
    assert not (tmp_path / "hung.sqlite.lock").exists() or _lock_is_free(tmp_path / "hung.sqlite.lock")


def _lock_is_free(path: Path) -> bool:
    with open(path, "rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def test_stopped_twice_under_faults_then_resumed_writes_the_same_bytes_and_pays_once(tmp_path, teacher):
    data = write_dataset(tmp_path / "in.jsonl", 100, 3)
    teacher.set_knobs(latency=0.0, error_rate=0.0, reset_rate=0.0)
    clean = subprocess.run(
        [*run_args(teacher, data, tmp_path, "clean"), "--quiet"], capture_output=True, text=True
    )
    assert clean.returncode == 0, clean.stderr

    teacher.set_knobs(latency=0.004, latency_jitter=0.008, error_rate=0.08, reset_rate=0.02, seed=5)
    teacher.reset_stats()
    args = run_args(teacher, data, tmp_path, "stopped")
    cache = tmp_path / "stopped.sqlite"
    pending_at_stop: list[set[str]] = []
    try:
        for sig, after in ((signal.SIGINT, 80), (signal.SIGTERM, 170)):
            proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            while teacher.stats(with_hashes=False)["answered"] < after:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.005)
            took, err = stop_with(proc, sig)
            assert took < 10 and proc.returncode == 130, err
            assert RESUME_HINT in err and "Traceback" not in err
            stats = teacher.stats()
            in_cache = committed(cache)
            answered_not_kept = set(stats["answered_by_hash"]) - in_cache
            # A clean stop commits every answer it has read; it may abandon those still being read.
            assert len(answered_not_kept) <= CONCURRENCY
            pending_at_stop.append(set(stats["received_by_hash"]) - in_cache)

        resumed = subprocess.run([*args, "--quiet"], capture_output=True, text=True, timeout=120)
    finally:
        teacher.set_knobs(**TeacherKnobs().to_dict())
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "stopped.jsonl").read_bytes() == (tmp_path / "clean.jsonl").read_bytes()
    # Each request was answered once, except those abandoned in flight at a stop.
    answered = teacher.stats()["answered_by_hash"]
    twice = {h for h, n in answered.items() if n > 1}
    assert twice <= set().union(*pending_at_stop)
