"""Issue 6, property 6: the API key (and a W&B key in the environment) is in no file a run writes and in no line it
prints, also when requests fail, when the run is interrupted, and while the progress display is live.

Every run here is ``distill run`` in its own process with its output on a pseudo-terminal, so the live progress
line is drawn as a user would see it. The files checked are every file under the test's directory: output,
manifest, rejects, the cache with its ``-wal``, ``-shm`` and lock files.
"""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from aiohttp import web

from distill.servers.teacher import TeacherKnobs, start_teacher_process

DISTILL = [sys.executable, "-m", "distill"]
API_KEY = "sk-distill-test-5f0c2a9e71d84b36a1e0"
WANDB_KEY = "wandb-test-0123456789abcdef0123456789abcdef"
SECRETS = (API_KEY, WANDB_KEY)


class Terminal:
    """A process whose stdout and stderr are a pseudo-terminal; ``text`` is everything it printed."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
        os.close(slave)
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._drain, args=(master,), daemon=True)
        self._reader.start()

    def _drain(self, master: int) -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            self._chunks.append(chunk)
        os.close(master)

    def wait(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        return code

    @property
    def text(self) -> str:
        return b"".join(self._chunks).decode("utf-8", "replace")


def environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "TOGETHER_API_KEY": API_KEY, "WANDB_API_KEY": WANDB_KEY, **extra}


def write_dataset(path: Path, conversations: int) -> Path:
    lines = []
    for c in range(conversations):
        if c == 1:
            lines.append('{"messages": "not a list"}')  # a reject, so the rejects file exists too
        marker = " REFUSE" if c % 10 == 3 else ""
        messages = [
            {"role": "user", "content": f"question {c}{marker}"},
            {"role": "assistant", "content": "x"},
        ]
        messages.append({"role": "user", "content": f"follow-up {c}"})
        lines.append(json.dumps({"id": f"c{c}", "messages": messages}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def assert_no_secret_in_files(directory: Path) -> int:
    files = [p for p in directory.rglob("*") if p.is_file()]
    for path in files:
        data = path.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in data, f"{secret[:8]}... found in {path.name}"
    return len(files)


def assert_no_secret_in(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text
        assert secret[-12:] not in text  # not even a recognisable piece of it


@pytest.fixture(scope="module")
def teacher():
    with start_teacher_process(TeacherKnobs(api_key=API_KEY)) as server:
        yield server


def test_no_secret_in_files_or_on_a_live_terminal_through_faults_failures_and_an_interrupt(tmp_path, teacher):
    teacher.set_knobs(
        latency=0.01,
        error_rate=0.1,
        reset_rate=0.04,
        truncated_rate=0.04,
        throttle_rate=0.04,
        hang_rate=0.01,
        permanent_marker="REFUSE",
        permanent_status=400,
        seed=3,
    )
    data = write_dataset(tmp_path / "in.jsonl", 60)
    args = [
        *DISTILL,
        "run",
        str(data),
        "--model",
        "teacher",
        "--base-url",
        teacher.base_url,
        "--concurrency",
        "4",
    ]
    args += [
        "--request-timeout",
        "0.3",
        "--cache",
        str(tmp_path / "c.sqlite"),
        "--output",
        str(tmp_path / "o.jsonl"),
    ]
    try:
        teacher.reset_stats()
        interrupted = Terminal(args, environment())
        while teacher.stats(with_hashes=False)["answered"] < 20:
            assert interrupted.proc.poll() is None, interrupted.text
            time.sleep(0.01)
        interrupted.proc.send_signal(signal.SIGINT)
        assert interrupted.wait() == 130, interrupted.text
        finished = Terminal(args, environment())
        assert finished.wait() == 1, finished.text  # the refused conversations fail for good
    finally:
        teacher.set_knobs(**TeacherKnobs(api_key=API_KEY).to_dict())

    assert "\x1b[2K" in interrupted.text and "conversations " in interrupted.text  # the live line was drawn
    assert "run the same command again to resume" in interrupted.text
    assert "failed c3 (in.jsonl:5): 400 from the teacher" in finished.text, finished.text
    for text in (interrupted.text, finished.text):
        assert "Traceback" not in text
        assert_no_secret_in(text)
    assert (tmp_path / "o.jsonl.rejects.jsonl").exists() and (tmp_path / "o.jsonl.manifest.json").exists()
    assert assert_no_secret_in_files(tmp_path) >= 5


def test_a_wrong_key_is_not_repeated_in_the_fix_it_message(tmp_path, teacher):
    data = write_dataset(tmp_path / "in.jsonl", 5)
    args = [*DISTILL, "run", str(data), "--model", "teacher", "--base-url", teacher.base_url]
    args += ["--cache", str(tmp_path / "c.sqlite"), "--output", str(tmp_path / "o.jsonl")]
    wrong = Terminal(args, environment(TOGETHER_API_KEY=API_KEY[::-1]))
    assert wrong.wait() == 2
    assert "401" in wrong.text and "TOGETHER_API_KEY" in wrong.text
    assert API_KEY[::-1] not in wrong.text and API_KEY[::-1][-12:] not in wrong.text
    assert_no_secret_in_files(tmp_path)


@pytest.fixture
async def quoting_provider():
    """A provider that quotes the key it was sent in its error messages (some real ones echo it back):
    401 for requests that say "revoked", 400 for every other one."""

    async def refuse(request: web.Request) -> web.Response:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        body = await request.json()
        status = 401 if "revoked" in json.dumps(body) else 400
        message = f"request refused for the API key {key}; see your dashboard"
        return web.json_response(
            {"error": {"message": message, "type": "invalid_request_error"}}, status=status
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", refuse)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    await runner.cleanup()


async def test_a_key_quoted_back_by_the_provider_is_cut_out_of_every_message_and_file(
    tmp_path, quoting_provider
):
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"id": "c0", "messages": [{"role": "user", "content": "hello"}]}) + "\n")
    revoked = tmp_path / "revoked.jsonl"
    revoked.write_text(json.dumps({"id": "r0", "messages": [{"role": "user", "content": "revoked"}]}) + "\n")
    for name, source, code in (("refused", data, 1), ("revoked", revoked, 2)):
        args = [*DISTILL, "run", str(source), "--model", "teacher", "--base-url", quoting_provider]
        args += ["--cache", str(tmp_path / f"{name}.sqlite"), "--output", str(tmp_path / f"{name}.out.jsonl")]
        proc = await _run(args, environment())
        assert proc[0] == code, proc[1]
        assert "request refused for the API key" in proc[1]  # the provider's reason is still passed on
        assert_no_secret_in(proc[1])
    assert assert_no_secret_in_files(tmp_path) >= 4


async def _run(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run ``args`` without blocking the event loop that serves the provider."""
    import asyncio

    proc = await asyncio.create_subprocess_exec(
        *args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode()
