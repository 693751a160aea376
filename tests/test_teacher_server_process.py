"""The local teacher in its own process: the Python helper, ``python -m distill teacher serve`` and the loadgen."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from distill.cli import teacher as teacher_cli
from distill.servers.teacher import TeacherKnobs, chat_answer, request_hash, start_teacher_process
from distill.servers.teacher.knobs import knobs_from_args
from distill.servers.teacher.loadgen import plain_client_load
from distill.servers.teacher.process import TeacherProcessError

MESSAGES = [{"role": "user", "content": "hello from another process"}]


def post_chat(base_url: str, key: str | None = None) -> tuple[int, dict]:
    body = json.dumps({"model": "m", "messages": MESSAGES}).encode()
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    request = urllib.request.Request(base_url + "/chat/completions", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_subprocess_helper_serves_counts_changes_knobs_and_stops():
    with start_teacher_process(TeacherKnobs(api_key="teacher-key-123", rpm=6000)) as teacher:
        assert teacher.base_url == f"http://127.0.0.1:{teacher.port}/v1"
        assert b"teacher-key-123" not in Path(f"/proc/{teacher.pid}/cmdline").read_bytes()
        status, answer = post_chat(teacher.base_url, "teacher-key-123")
        assert status == 200 and answer["choices"][0]["message"]["content"] == chat_answer(MESSAGES)
        assert post_chat(teacher.base_url)[0] == 401
        stats = teacher.stats()
        assert stats["answered"] == 1 and stats["unauthorized"] == 1
        assert stats["received_by_hash"] == {request_hash({"model": "m", "messages": MESSAGES}): 1}
        assert "received_by_hash" not in teacher.stats(with_hashes=False)
        teacher.reset_stats()
        assert teacher.stats()["requests"] == 0
        assert teacher.set_knobs(error_rate=1.0).error_rate == 1.0
        assert post_chat(teacher.base_url, "teacher-key-123")[0] in (500, 503)
        assert teacher.stop() == 0
    assert teacher.process.poll() == 0
    with pytest.raises(TeacherProcessError):
        teacher.stats()


def test_subprocess_helper_reports_a_server_that_cannot_start():
    with start_teacher_process() as first, pytest.raises(TeacherProcessError, match="already in use"):
        start_teacher_process(port=first.port)


async def test_plain_client_load_measures_requests_per_second():
    with start_teacher_process() as teacher:
        result = await plain_client_load(teacher.base_url, in_flight=8, seconds=0.5)
        received = teacher.stats(with_hashes=False)
    assert result.requests > 50 and result.ok == result.requests == received["answered"]
    assert result.rps == pytest.approx(result.requests / result.seconds)


def test_cli_flags_override_knobs_json_which_overrides_the_environment(monkeypatch):
    monkeypatch.setenv("DISTILL_TEACHER_KNOBS", '{"rpm": 6, "latency": 0.5, "seed": 1}')
    parser = argparse.ArgumentParser(prog="distill")
    teacher_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["teacher", "serve", "--port", "0", "--knobs-json", '{"rpm": 60, "seed": 3}', "--rpm", "600",
         "--retry-after", "false", "--permanent-marker", "NO"]
    )  # fmt: skip
    knobs = knobs_from_args(args)
    assert (knobs.rpm, knobs.seed, knobs.retry_after, knobs.permanent_marker) == (600, 3, False, "NO")
    assert knobs.latency == 0.5
    assert args.func.__name__ == "serve_from_args"


def test_distill_teacher_serve_command_runs_until_sigterm(tmp_path):
    port_file = tmp_path / "port"
    command = [
        sys.executable,
        "-m",
        "distill",
        "teacher",
        "serve",
        "--port",
        "0",
        "--port-file",
        str(port_file),
    ]
    process = subprocess.Popen([*command, "--latency", "0.01"], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        port = int(port_file.read_text())
        assert process.stdout.readline().strip() == f"distill teacher: serving http://127.0.0.1:{port}/v1"
        assert post_chat(f"http://127.0.0.1:{port}/v1")[0] == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        process.kill()
        process.wait()


def test_distill_teacher_serve_rejects_bad_knobs_with_a_fix_it_message():
    done = subprocess.run(
        [sys.executable, "-m", "distill", "teacher", "serve", "--error-rate", "0.8", "--hang-rate", "0.5"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "must add up to at most 1" in done.stderr and "Traceback" not in done.stderr


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; only its parent (init here) has yet to reap it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
def test_teacher_process_dies_with_the_process_that_started_it():
    script = "from distill.servers.teacher import start_teacher_process as s; import time; print(s().pid, flush=True); time.sleep(60)"
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        teacher_pid = int(parent.stdout.readline())
        assert alive(teacher_pid)
        argv = Path(f"/proc/{teacher_pid}/cmdline").read_bytes().decode().split("\0")
        workdir = Path(argv[argv.index("--port-file") + 1]).parent
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while alive(teacher_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(teacher_pid)
    finally:
        parent.kill()
        parent.wait()
    assert not workdir.exists()  # the orphaned server removed what its dead parent could not
