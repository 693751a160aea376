"""TeacherClient over aiohttp, against the project's local teacher and hand-written asyncio servers on 127.0.0.1.

The client makes exactly one HTTP call per ``send``: answers and rate headers come back parsed, every failure
is a TeacherError subclass that says whether retrying helps, the API key never shows, and a proxy variable that
applies to the teacher's URL carries the calls.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from distill.client import TeacherClient, proxy_for
from distill.errors import (
    AuthenticationError,
    ConnectionFailed,
    MalformedResponse,
    RateLimited,
    RequestTimeout,
    UsageError,
)
from distill.requests import TeacherRequest, sampling_params
from distill.servers.teacher import TeacherKnobs, TeacherServer, chat_answer

HOST = "127.0.0.1"


def teacher_requests() -> list[TeacherRequest]:
    params = sampling_params(max_tokens=64, temperature=0.0)
    chat = TeacherRequest(
        api="chat", model="teacher-70b", params=params, messages=(("system", "Be brief."), ("user", "hi ✓"))
    )
    completion = TeacherRequest(api="completions", model="teacher-70b", params=params, prompt="Once upon")
    return [chat, completion]


async def test_answers_and_rate_headers_come_back_parsed():
    knobs = TeacherKnobs(api_key="sk-test", rpm=600, tpm=1_000_000, window=60)
    async with TeacherServer(knobs) as teacher, TeacherClient(teacher.base_url, "sk-test") as client:
        results = [await client.send(request) for request in teacher_requests()]
        assert teacher.stats.answered == 2 and teacher.stats.unauthorized == 0
    (chat, chat_rate), (completion, completion_rate) = results
    assert chat.text == chat_answer(teacher_requests()[0].body()["messages"])
    assert completion.text and chat.prompt_tokens and completion.completion_tokens
    assert chat_rate.remaining == 599 and completion_rate.remaining == 598
    assert chat_rate.tokens_remaining is not None and 0 < chat_rate.reset_seconds <= 60


async def test_a_429_and_a_refused_key_are_their_own_errors_without_the_key():
    async with TeacherServer(TeacherKnobs(api_key="sk-right", throttle_rate=1.0)) as teacher:
        async with TeacherClient(teacher.base_url, "sk-right") as client:
            with pytest.raises(RateLimited, match="429 rate limited") as limited:
                await client.send(teacher_requests()[0])
        async with TeacherClient(teacher.base_url, "sk-wrong") as client:
            with pytest.raises(AuthenticationError, match="401 from the teacher") as refused:
                await client.send(teacher_requests()[0])
    assert limited.value.retry_after == pytest.approx(0.05)
    assert refused.value.status == 401 and "sk-wrong" not in str(refused.value)


async def test_a_refused_connection_is_a_connection_failure_naming_the_url():
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        url = f"http://{HOST}:{sock.getsockname()[1]}/v1"
        async with TeacherClient(url) as client:
            with pytest.raises(ConnectionFailed, match=f"connection to {url}/chat/completions failed"):
                await client.send(teacher_requests()[0])


# -- hand-written servers: exact bytes on the wire ---------------------------------------------------------

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_server(script: Script) -> AsyncIterator[str]:
    """``script`` on each connection to 127.0.0.1 and a free port; yields the ``/v1`` base URL."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await script(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, HOST, 0)
    try:
        yield f"http://{HOST}:{server.sockets[0].getsockname()[1]}/v1"
    finally:
        server.close()


def answering(data: bytes) -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()

    return script


@pytest.mark.parametrize(
    "data",
    [
        b"SMTP ready\r\n\r\n",  # not HTTP at all
        b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"choices"',  # hangs up mid-body
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # a chunk size that is no number
    ],
)
async def test_a_broken_answer_is_a_connection_failure(data):
    async with raw_server(answering(data)) as url, TeacherClient(url) as client:
        with pytest.raises(ConnectionFailed, match=f"connection to {url}/chat/completions failed"):
            await client.send(teacher_requests()[0])


async def test_a_200_without_an_answer_in_it_is_a_malformed_response():
    body = b'{"choices": []}'
    data = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    async with raw_server(answering(data)) as url, TeacherClient(url) as client:
        with pytest.raises(MalformedResponse):
            await client.send(teacher_requests()[0])


async def test_a_server_that_never_answers_is_a_timeout_naming_the_flag():
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async with raw_server(silent) as url, TeacherClient(url, timeout=0.3) as client:
        with pytest.raises(RequestTimeout, match=r"within 0\.3 s \(--request-timeout\)"):
            await client.send(teacher_requests()[0])


@pytest.mark.parametrize("value", ["Bearer sk-secret\r\n", "Bearer sk-secret\nX-Injected: 1", "Bearer ключ"])
def test_a_key_that_cannot_go_on_the_wire_is_refused_without_showing_it(value):
    with pytest.raises(UsageError, match="Authorization") as failure:
        TeacherClient(f"http://{HOST}:1/v1", value.removeprefix("Bearer "))
    assert "sk-secret" not in str(failure.value) and "ключ" not in str(failure.value)


# -- proxies ------------------------------------------------------------------------------------------------

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
PROXY = "http://proxy.example:3128"


@pytest.fixture
def no_proxy_env(monkeypatch):
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("env", "url", "proxy"),
    [
        ({}, "http://127.0.0.1:8000/v1", None),
        ({"HTTP_PROXY": PROXY}, "http://10.0.0.5:8000/v1", PROXY),
        ({"HTTPS_PROXY": PROXY}, "https://api.together.xyz/v1", PROXY),
        ({"https_proxy": PROXY}, "https://api.together.xyz/v1", PROXY),
        ({"HTTPS_PROXY": PROXY}, "http://10.0.0.5:8000/v1", None),
        ({"HTTP_PROXY": PROXY}, "https://api.together.xyz/v1", None),
        ({"HTTPS_PROXY": PROXY, "NO_PROXY": "localhost,.together.xyz"}, "https://api.together.xyz/v1", None),
        ({"HTTP_PROXY": PROXY, "NO_PROXY": "127.0.0.1"}, "http://127.0.0.1:8000/v1", None),
        ({"HTTP_PROXY": PROXY, "NO_PROXY": "*"}, "http://10.0.0.5:8000/v1", None),
    ],
)
def test_the_proxy_is_the_one_a_variable_names_for_the_url_unless_no_proxy_exempts_it(
    no_proxy_env, env, url, proxy
):
    for name, value in env.items():
        no_proxy_env.setenv(name, value)
    assert proxy_for(url) == proxy


async def test_a_proxy_variable_sends_the_calls_through_that_proxy_looked_up_once(no_proxy_env):
    # The teacher stands in for the proxy: it is named by HTTP_PROXY, while --base-url names a host that does not
    # resolve, so an answer can only come through the proxy.
    async with TeacherServer(TeacherKnobs()) as teacher:
        no_proxy_env.setenv("HTTP_PROXY", teacher.base_url.removesuffix("/v1"))
        async with TeacherClient("http://teacher.invalid/v1") as client:
            no_proxy_env.delenv("HTTP_PROXY")  # looked up when the client was made, not per request
            answer, _ = await client.send(teacher_requests()[0])
        assert answer.text and teacher.stats.answered == 1
