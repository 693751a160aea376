"""distill against an OpenAI-compatible server it did not write: ``transformers serve`` on the tiny local model.

What differed from distill's own teacher, and what distill does about it (see README, "Servers other than ours"):

* a returned text may hold the stop sequence (and the rest of the token that held it): the client cuts it;
* errors come as FastAPI's ``{"detail": ...}``, not ``{"error": {"message"}}``: the client reads both;
* ``top_k`` and ``repetition_penalty`` are refused with 422 (OpenAI's API has neither): documented;
* ``/v1/models`` lists the Hugging Face cache, not the served model (and answers 500 without a cache folder);
* a malformed request (``messages`` not a list, ``max_tokens`` 0) is a 500, which distill retries as transient.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import DISTILL

from distill.client import _error_message, cut_at_stop
from distill.requests import TeacherRequest, TeacherResponse

SAMPLE = Path(__file__).parent.parent / "distill" / "data" / "sample_sharegpt.json"


# --- the client's fixes, without a server ------------------------------------------------------------------------


def test_a_stop_sequence_left_in_the_answer_is_cut():
    request = TeacherRequest("completions", "m", (("stop", ["[INST]", "a"]),), prompt="p")
    assert cut_at_stop(TeacherResponse("hat [INST] more", "stop"), request).text == "h"
    unstopped = TeacherRequest("completions", "m", (), prompt="p")
    assert cut_at_stop(TeacherResponse("hat", "stop"), unstopped).text == "hat"


def test_fastapi_error_details_are_read():
    assert _error_message(b'{"detail": "Server is pinned to \'x\'"}') == "Server is pinned to 'x'"
    body = (
        b'{"detail": [{"type": "dict_type", "loc": ["body"], "msg": "Input should be a valid dictionary"}]}'
    )
    assert _error_message(body) == "Input should be a valid dictionary"
    assert _error_message(b'{"error": {"message": "no"}}') == "no"


# --- transformers serve ------------------------------------------------------------------------------------------


@dataclass
class RealServer:
    base_url: str
    model: str
    log: Path

    def requests_received(self) -> int:
        return self.log.read_text(errors="replace").count("[Request received]")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def transformers_serve(tmp_path_factory) -> Iterator[RealServer]:
    pytest.importorskip("torch")
    pytest.importorskip("fastapi", reason="transformers serve needs the 'serving' extra")
    pytest.importorskip("uvicorn", reason="transformers serve needs the 'serving' extra")
    from trainers.local.tiny_model import make_tiny_model

    folder = tmp_path_factory.mktemp("real-server")
    model = make_tiny_model(folder / "tiny-llama").path
    (folder / "hf-cache").mkdir()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",  # it would ask PyPI for a newer transformers at every start
        "HF_HUB_CACHE": str(folder / "hf-cache"),  # /v1/models scans it, and answers 500 when it is missing
    }
    port, log = free_port(), folder / "server.log"
    command = [
        sys.executable, "-c", "from transformers.cli.transformers import main; main()",
        "serve", str(model), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
        "--log-level", "info",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while "Uvicorn running" not in log.read_text(errors="replace"):
            assert process.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "transformers serve did not start in 120 s"
            time.sleep(0.2)
        yield RealServer(f"http://127.0.0.1:{port}/v1", str(model), log)
    finally:
        process.terminate()
        process.wait(timeout=20)


def distill(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*DISTILL, *args], capture_output=True, text=True, timeout=300)


def run_against(server: RealServer, tmp: Path, name: str, *extra: str) -> subprocess.CompletedProcess:
    return distill(
        "run", str(SAMPLE), "--model", server.model, "--base-url", server.base_url, "--limit", "3",
        "--max-tokens", "6", "--temperature", "0", "--cache", str(tmp / "cache.sqlite"),
        "--output", str(tmp / f"{name}.jsonl"), "--quiet", *extra,
    )  # fmt: skip


@pytest.mark.local_trainer
@pytest.mark.slow
@pytest.mark.parametrize("api", ["chat", "completions"])
def test_run_rerun_and_check_against_transformers_serve(transformers_serve, tmp_path, api):
    extra = ["--api", api] + (["--output-format", "llama2"] if api == "completions" else [])
    before = transformers_serve.requests_received()
    first = run_against(transformers_serve, tmp_path, api, *extra)
    assert first.returncode == 0, first.stderr
    sent = transformers_serve.requests_received() - before
    lines = (tmp_path / f"{api}.jsonl").read_text().splitlines()
    assert len(lines) == 3 and sent >= 3
    manifest = json.loads((tmp_path / f"{api}.jsonl.manifest.json").read_text())
    assert manifest["tokens"]["completion"] > 0 and manifest["tokens"]["prompt"] > 0, manifest["tokens"]
    if api == "completions":  # the [INST] stop sequence never reaches the file, whatever the server returned
        assert all("[INST]" not in json.loads(line)["text"].split("[/INST]")[-1] for line in lines)

    again = run_against(transformers_serve, tmp_path, api, *extra)
    assert again.returncode == 0, again.stderr
    assert transformers_serve.requests_received() - before == sent  # the rerun sent nothing
    rerun = json.loads((tmp_path / f"{api}.jsonl.manifest.json").read_text())["this_run"]
    assert rerun["requests_sent"] == 0 and rerun["conversations_done"] == 3
    assert (tmp_path / f"{api}.jsonl").read_text().splitlines() == lines

    check = distill("check", str(tmp_path / f"{api}.jsonl"))
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.local_trainer
@pytest.mark.slow
def test_distill_serve_answers_as_transformers_serve_does(transformers_serve):
    """Greedy decoding of the same model: distill serve's generation gives transformers serve's text and usage."""
    import urllib.request

    from trainers.local.generation import GenerationRequest, LocalModels

    messages = [{"role": "user", "content": "What is the Vatican Library?"}]
    body = {"model": transformers_serve.model, "messages": messages, "max_tokens": 6, "temperature": 0}
    request = urllib.request.Request(
        f"{transformers_serve.base_url}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        theirs = json.loads(response.read())
    ours = LocalModels(transformers_serve.model).generate(
        GenerationRequest(transformers_serve.model, messages=messages, max_tokens=6, temperature=0)
    )
    assert ours.text == theirs["choices"][0]["message"]["content"]
    assert ours.finish_reason == theirs["choices"][0]["finish_reason"]
    assert (ours.prompt_tokens, ours.completion_tokens) == (
        theirs["usage"]["prompt_tokens"],
        theirs["usage"]["completion_tokens"],
    )
