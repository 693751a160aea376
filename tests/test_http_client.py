"""distill.http.HttpPool against real servers on 127.0.0.1: aiohttp.web, hand-written asyncio servers, TLS.

The raw servers (:class:`RawServer`) write exact bytes, so each framing rule of HTTP/1.1 is checked on the wire:
Content-Length, chunked (with extensions and trailers), the end of the connection, interim 1xx answers,
keep-alive and ``Connection: close``, gzip, and every way an answer can be broken. The last tests run
distill's TeacherClient over both HTTP clients against the project's local teacher.
"""

from __future__ import annotations

import asyncio
import gzip
import random
import socket
import ssl
import struct
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

import orjson
import pytest
import trustme
from aiohttp import web

from distill.client import TeacherClient, chosen_http_client
from distill.errors import (
    AuthenticationError,
    ConnectionFailed,
    RateLimited,
    RequestTimeout,
    UsageError,
)
from distill.http import HttpPool, HttpResponse
from distill.requests import TeacherRequest, sampling_params
from distill.servers.teacher import TeacherKnobs, TeacherServer

HOST = "127.0.0.1"
LARGE = random.Random(0).randbytes(6 * 1024 * 1024)  # asyncio reads at most 256 KiB at a time: 24+ reads


# -- a hand-written HTTP server --------------------------------------------------------------------------


@dataclass
class RawRequest:
    line: str
    headers: dict[str, str]
    body: bytes

    @property
    def path(self) -> str:
        return self.line.split(" ")[1]


@dataclass
class RawConnection:
    """One connection the raw server accepted; ``requests`` it read, ``eof`` once the client hung up."""

    index: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    requests: list[RawRequest] = field(default_factory=list)
    eof: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    async def read_request(self) -> RawRequest | None:
        """The next request on this connection, or None once the client closed it."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head[:-4].decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        except (asyncio.IncompleteReadError, ConnectionError):
            self.eof.set()
            return None
        request = RawRequest(lines[0], headers, body)
        self.requests.append(request)
        return request

    def hang_up_with_reset(self) -> None:
        """Close with a TCP reset (SO_LINGER 0), not a FIN."""
        self.writer.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        self.writer.transport.abort()


Script = Callable[[RawConnection], Awaitable[None]]


class RawServer:
    """``asyncio.start_server`` on 127.0.0.1 and a free port, running ``script`` on each connection.

    Counts the connections it accepted and the most that were open at once; the connection is closed
    (a FIN) when the script returns.
    """

    def __init__(self, script: Script, ssl_context: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.ssl_context = ssl_context
        self.connections: list[RawConnection] = []
        self.open = 0
        self.max_open = 0
        self._tasks: set[asyncio.Task] = set()

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._handle, HOST, 0, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"{'https' if self.ssl_context else 'http'}://{HOST}:{self.port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        connection = RawConnection(len(self.connections), reader, writer)
        self.connections.append(connection)
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            await self._serve(connection)
        except asyncio.CancelledError:
            pass  # the server is stopping (a 3.11 start_server logs a handler that ends cancelled)
        finally:
            connection.finished.set()

    async def _serve(self, connection: RawConnection) -> None:
        try:
            await self.script(connection)
        finally:
            self.open -= 1
            connection.writer.close()
        with suppress(ConnectionError):
            await connection.writer.wait_closed()

    def requests(self) -> list[RawRequest]:
        return [request for connection in self.connections for request in connection.requests]


def http_answer(
    body: bytes = b"", *, status: str = "200 OK", headers: tuple[str, ...] = (), version: str = "HTTP/1.1"
) -> bytes:
    """An answer framed by Content-Length."""
    lines = [f"{version} {status}", *headers, f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def answering(*parts: bytes, close: bool = False) -> Script:
    """Answer every request with ``parts``, each its own write and a turn of the loop; ``close``: then hang up."""

    async def script(connection: RawConnection) -> None:
        while await connection.read_request() is not None:
            for part in parts:
                connection.writer.write(part)
                await connection.writer.drain()
                await asyncio.sleep(0)  # let the client read this part on its own
            if close:
                return

    return script


async def post_once(url: str, path: str = "/", body: bytes = b"{}", timeout: float = 5.0) -> HttpResponse:
    async with HttpPool(url, {}) as pool:
        return await pool.post(path, body, timeout)


async def until(event: asyncio.Event) -> None:
    """Wait for ``event``; fail the test, rather than hang it, after 5 s."""
    async with asyncio.timeout(5):
        await event.wait()


# -- an aiohttp.web server --------------------------------------------------------------------------------


def web_app() -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen = {
            "path": request.path,
            "host": request.headers.get("Host"),
            "content_length": request.headers.get("Content-Length"),
            "authorization": request.headers.get("Authorization"),
            "body": (await request.read()).decode(),
            "client_port": peer[1] if peer else None,
        }
        response = web.Response(body=orjson.dumps(seen), content_type="application/json")
        response.headers["X-RateLimit-Remaining"] = "7"
        response.headers.add("X-Multi", "first")
        response.headers.add("X-Multi", "second")
        return response

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        headers = {"retry-after-ms": "250"} if code == 429 else {}
        if code == 401:
            headers["WWW-Authenticate"] = "Bearer"
        body = orjson.dumps({"error": {"message": f"status {code}"}})
        return web.Response(status=code, body=body, headers=headers, content_type="application/json")

    async def chunked(request: web.Request) -> web.StreamResponse:
        count = int(request.match_info["count"])
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(count):
            await response.write(f"chunk {i};".encode())
        await response.write_eof()
        return response

    async def large(request: web.Request) -> web.Response:
        return web.Response(body=LARGE)

    async def large_chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(LARGE), 100_000):
            await response.write(LARGE[start : start + 100_000])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/echo", echo)
    app.router.add_post("/v1/chat/completions", echo)
    app.router.add_post("/v1/status/{code}", status)
    app.router.add_post("/v1/chunked/{count}", chunked)
    app.router.add_post("/v1/large", large)
    app.router.add_post("/v1/large-chunked", large_chunked)
    return app


@asynccontextmanager
async def web_server(ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """``web_app()`` on 127.0.0.1 and a free port; yields its ``/v1`` base URL."""
    runner = web.AppRunner(web_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, 0, ssl_context=ssl_context).start()
    scheme = "https" if ssl_context else "http"
    try:
        yield f"{scheme}://{HOST}:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


@pytest.fixture
async def web_url() -> AsyncIterator[str]:
    async with web_server() as url:
        yield url


# -- TLS on the servers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, hostname: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(hostname).configure_cert(context)
    return context


@pytest.fixture
def trust(tmp_path, monkeypatch):
    """Make ``ssl.create_default_context()`` trust a CA, through SSL_CERT_FILE (read when the pool is made)."""

    def trust(ca: trustme.CA) -> None:
        path = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(path))
        monkeypatch.setenv("SSL_CERT_FILE", str(path))
        monkeypatch.delenv("SSL_CERT_DIR", raising=False)

    return trust


@pytest.fixture(params=["http", "https"])
def server_tls(request, ca, trust) -> ssl.SSLContext | None:
    """Run a test over plain HTTP and over TLS: None, or the server's context (its CA trusted)."""
    if request.param == "http":
        return None
    trust(ca)
    return server_context(ca, HOST)


# -- 1. answers from aiohttp.web ---------------------------------------------------------------------------


async def test_a_200_has_its_status_lower_cased_headers_and_body(web_url):
    async with HttpPool(web_url, {}) as pool:
        answer = await pool.post("/echo", b'{"q": 1}', 5)
    assert answer.status == 200
    assert answer.headers["x-ratelimit-remaining"] == "7"
    assert answer.headers["content-type"] == "application/json"
    assert all(name == name.lower() for name in answer.headers)
    assert orjson.loads(answer.body)["body"] == '{"q": 1}'


async def test_a_repeated_header_is_joined_with_a_comma(web_url):
    answer = await post_once(web_url, "/echo")
    assert answer.headers["x-multi"] == "first, second"


@pytest.mark.parametrize("code", [429, 500, 401])
async def test_error_statuses_come_back_with_their_headers_and_body(web_url, code):
    answer = await post_once(web_url, f"/status/{code}")
    assert answer.status == code
    assert orjson.loads(answer.body) == {"error": {"message": f"status {code}"}}
    assert answer.headers.get("retry-after-ms") == ("250" if code == 429 else None)
    assert answer.headers.get("www-authenticate") == ("Bearer" if code == 401 else None)


@pytest.mark.parametrize("count", [0, 1, 5])
async def test_a_chunked_body_is_reassembled(web_url, count):
    async with HttpPool(web_url, {}, limit=1) as pool:
        answer = await pool.post(f"/chunked/{count}", b"{}", 5)
        again = await pool.post(f"/chunked/{count}", b"{}", 5)  # the connection is still framed right
    assert answer.headers["transfer-encoding"] == "chunked"
    assert answer.body == again.body == "".join(f"chunk {i};" for i in range(count)).encode()


@pytest.mark.parametrize("path", ["/large", "/large-chunked"])
async def test_a_body_of_several_megabytes_arrives_whole(web_url, path):
    async with HttpPool(web_url, {}) as pool:
        answer = await pool.post(path, b"{}", 10)
    assert len(answer.body) == len(LARGE) and answer.body == LARGE


# -- 2. keep-alive and the connection limit ----------------------------------------------------------------


async def test_sequential_posts_reuse_one_connection(web_url):
    async with HttpPool(web_url, {}) as pool:
        answers = [await pool.post("/echo", f'{{"n": {i}}}'.encode(), 5) for i in range(6)]
    seen = [orjson.loads(answer.body) for answer in answers]
    assert [s["body"] for s in seen] == [f'{{"n": {i}}}' for i in range(6)]
    assert len({s["client_port"] for s in seen}) == 1


async def test_sequential_posts_reuse_one_connection_on_the_wire():
    async with RawServer(answering(http_answer(b"ok"))) as server, HttpPool(server.url, {}) as pool:
        for _ in range(5):
            assert (await pool.post("/", b"{}", 5)).body == b"ok"
    assert len(server.connections) == 1 and len(server.connections[0].requests) == 5


async def test_the_limit_caps_concurrent_connections_and_each_answer_meets_its_request():
    limit = 4
    barrier = asyncio.Barrier(limit)

    async def script(connection: RawConnection) -> None:
        while (request := await connection.read_request()) is not None:
            await barrier.wait()  # answer only once `limit` requests are in flight together
            connection.writer.write(http_answer(b"answer to " + request.body))

    async with RawServer(script) as server, HttpPool(server.url, {}, limit=limit) as pool:
        bodies = [f"request {i}".encode() for i in range(3 * limit)]
        answers = await asyncio.gather(*(pool.post("/", body, 5) for body in bodies))
    assert [answer.body for answer in answers] == [b"answer to " + body for body in bodies]
    assert server.max_open == limit and len(server.connections) == limit


# -- 3. framing on the wire --------------------------------------------------------------------------------


async def test_a_body_without_length_ends_when_the_server_closes():
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n"
    async with (
        RawServer(answering(head, b'{"part": 1,', b' "part2": 2}', close=True)) as server,
        HttpPool(server.url, {}) as pool,
    ):
        first = await pool.post("/", b"{}", 5)
        second = await pool.post("/", b"{}", 5)
    assert first.body == second.body == b'{"part": 1, "part2": 2}'
    assert len(server.connections) == 2


@pytest.mark.parametrize(
    ("answer", "reused"),
    [
        (http_answer(b"ok", headers=("Connection: close",)), False),
        (http_answer(b"ok", headers=("Connection: Keep-Alive, Close",)), False),
        (http_answer(b"ok", version="HTTP/1.0"), False),
        (http_answer(b"ok", version="HTTP/1.0", headers=("Connection: keep-alive",)), True),
        (http_answer(b"ok", headers=("Connection: keep-alive",)), True),
    ],
)
async def test_connection_close_and_http_1_0_answers_are_not_reused(answer, reused):
    # The server keeps every connection open and would answer again: only the client decides.
    async with RawServer(answering(answer)) as server, HttpPool(server.url, {}) as pool:
        for _ in range(3):
            assert (await pool.post("/", b"{}", 5)).body == b"ok"
        if not reused:
            for connection in server.connections[:-1]:
                await until(connection.eof)  # the pool closed it
    assert [len(c.requests) for c in server.connections] == ([3] if reused else [1, 1, 1])


async def test_interim_1xx_answers_are_skipped():
    parts = (
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
        http_answer(b"final", headers=("X-Final: yes",)),
    )
    async with RawServer(answering(*parts)) as server, HttpPool(server.url, {}) as pool:
        answers = [await pool.post("/", b"{}", 5) for _ in range(2)]
    for answer in answers:
        assert (answer.status, answer.body, answer.headers["x-final"]) == (200, b"final", "yes")
        assert "link" not in answer.headers
    assert len(server.connections) == 1


async def test_interim_answer_in_the_same_packet_as_the_final_one():
    answer = b"HTTP/1.1 100 Continue\r\n\r\n" + http_answer(b"final")
    async with RawServer(answering(answer)) as server:
        assert (await post_once(server.url)).body == b"final"


async def test_chunk_extensions_and_trailers_are_consumed():
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n"
        b"4;name=value\r\nWiki\r\n"
        b'5 ; quoted="a;b"\r\npedia\r\n'
        b"0;last=yes\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n"
    )
    async with RawServer(answering(answer)) as server, HttpPool(server.url, {}) as pool:
        answers = [await pool.post("/", b"{}", 5) for _ in range(3)]
    assert [a.body for a in answers] == [b"Wikipedia"] * 3
    assert len(server.connections) == 1  # each answer ended exactly where the next began


@pytest.mark.parametrize(
    "answer",
    [
        http_answer(b'{"text": "byte by byte"}', headers=("X-A: 1",)),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'9\r\n{"text": \r\nf\r\n"byte by byte"}\r\n0\r\n\r\n',
    ],
)
async def test_an_answer_written_one_byte_at_a_time(answer):
    parts = [answer[i : i + 1] for i in range(len(answer))]
    async with RawServer(answering(*parts)) as server, HttpPool(server.url, {}) as pool:
        answers = [await pool.post("/", b"{}", 5) for _ in range(2)]
    assert [a.body for a in answers] == [b'{"text": "byte by byte"}'] * 2
    assert len(server.connections) == 1


async def test_an_idle_connection_the_server_closed_is_not_used_again(server_tls):
    script = answering(http_answer(b"ok"), close=True)
    async with RawServer(script, server_tls) as server, HttpPool(server.url, {}) as pool:
        assert (await pool.post("/", b"{}", 5)).body == b"ok"
        await until(server.connections[0].finished)  # the server has closed its end
        assert (await pool.post("/", b"{}", 5)).body == b"ok"
    assert [len(c.requests) for c in server.connections] == [1, 1]


async def test_a_request_racing_the_servers_idle_close_is_sent_again_on_a_new_connection(server_tls):
    # A server closes an idle keep-alive connection (its keep-alive timeout) just as the pool sends the next
    # request on it: the FIN is on its way, the pool has not read it yet. The server never saw the request.
    async def script(connection: RawConnection) -> None:
        while await connection.read_request() is not None:
            if connection.index == 0 and len(connection.requests) == 2:
                return  # the test half-closed this connection; the request that still came is not answered
            connection.writer.write(http_answer(f"answer {connection.index}".encode()))

    async with RawServer(script, server_tls) as server, HttpPool(server.url, {}, limit=1) as pool:
        assert (await pool.post("/", b"1", 5)).body == b"answer 0"
        server.connections[0].writer.get_extra_info("socket").shutdown(socket.SHUT_WR)
        # No await between the server's FIN and the request: the pool cannot have noticed the close.
        assert (await pool.post("/", b"2", 5)).body == b"answer 1"
    assert [[r.body for r in c.requests] for c in server.connections] == [[b"1", b"2"], [b"2"]]


async def test_a_request_the_server_hangs_up_on_is_sent_again_at_most_once():
    async def script(connection: RawConnection) -> None:
        while (request := await connection.read_request()) is not None:
            if request.body == b"poison":
                return  # a FIN and no answer, whether the connection is new or kept alive
            connection.writer.write(http_answer(b"ok"))

    async with RawServer(script) as server, HttpPool(server.url, {}, limit=1) as pool:
        assert (await pool.post("/", b"fine", 5)).body == b"ok"
        with pytest.raises(ConnectionFailed, match="closed the connection before the answer"):
            await pool.post("/", b"poison", 5)  # the kept-alive try, then one try on a new connection
        with pytest.raises(ConnectionFailed, match="closed the connection before the answer"):
            await pool.post("/", b"poison", 5)  # a new connection: no second try
        assert (await pool.post("/", b"fine", 5)).body == b"ok"
    assert [r.body for r in server.requests()].count(b"poison") == 3


async def test_a_reset_after_the_request_is_not_sent_again():
    async def script(connection: RawConnection) -> None:
        while (request := await connection.read_request()) is not None:
            if request.body == b"reset":
                connection.hang_up_with_reset()
                return
            connection.writer.write(http_answer(b"ok"))

    async with RawServer(script) as server, HttpPool(server.url, {}, limit=1) as pool:
        assert (await pool.post("/", b"fine", 5)).body == b"ok"
        with pytest.raises(ConnectionFailed):
            await pool.post("/", b"reset", 5)
        assert (await pool.post("/", b"fine", 5)).body == b"ok"
    assert [r.body for r in server.requests()] == [b"fine", b"reset", b"fine"]


@pytest.mark.parametrize(
    "parts",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", b"x" * 10),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"a\r\n0123456789\r\n5\r\n012"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"5\r\n01234\r\n0\r\n"),
        (b"HTTP/1.1 200 OK\r\nContent-Le",),
    ],
    ids=["content-length", "chunked", "before-the-last-crlf", "in-the-head"],
)
async def test_the_server_closing_mid_answer_is_a_connection_failure(parts):
    async with RawServer(answering(*parts, close=True)) as server:
        with pytest.raises(ConnectionFailed, match="closed the connection before the answer was complete"):
            await post_once(server.url)


@pytest.mark.parametrize(
    "garbage",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"hello there\r\n\r\n",
        b"\x15\x03\x03\x00\x02\x02\x46",
        b"HTTP/2 200\r\n\r\n",
    ],
)
async def test_garbage_instead_of_a_status_line_fails_at_once(garbage):
    # The server sends its bytes and waits: the pool must not wait for a head that never comes.
    async def script(connection: RawConnection) -> None:
        await connection.read_request()
        connection.writer.write(garbage)
        await connection.eof.wait()

    async with RawServer(script) as server:
        started = time.monotonic()
        with pytest.raises(ConnectionFailed, match="not valid HTTP/1.1: status line") as failure:
            await post_once(server.url, timeout=5)
        assert time.monotonic() - started < 2
    assert "--base-url" in str(failure.value)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", "more body bytes than Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: two\r\n\r\nok", "Content-Length 'two'"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\nok", "Content-Length '\xb2'"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok", "Content-Length '-2'"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", "Content-Length '2, 3'"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokX\r\n0\r\n\r\n",
            "not followed by CRLF",
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n", "chunk size b'zz'"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-2\r\nok\r\n0\r\n\r\n", "chunk size b'-2'"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\nok\r\n0\r\n\r\n", "chunk size b'0x2'"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nEXTRA",
            "bytes after the last chunk",
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", "Transfer-Encoding"),
        (b"HTTP/1.1 200 OK\r\n Folded: x\r\nContent-Length: 0\r\n\r\n", "header line"),
    ],
)
async def test_a_badly_framed_answer_is_a_connection_failure(answer, message):
    async def script(connection: RawConnection) -> None:
        await connection.read_request()
        connection.writer.write(answer)
        await connection.eof.wait()  # keep the connection open: the framing alone must be judged

    async with RawServer(script) as server:
        with pytest.raises(ConnectionFailed, match="not valid HTTP/1.1") as failure:
            await post_once(server.url)
    assert message in str(failure.value)


async def test_a_chunk_size_line_that_never_ends_is_refused():
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    async with RawServer(answering(head, b"1" * 70_000)) as server:
        with pytest.raises(ConnectionFailed, match="chunk size line"):
            await post_once(server.url)


def gzip_answer(*members: bytes, chunked: bool = False, encoding: str = "gzip") -> bytes:
    body = b"".join(members)
    if not chunked:
        return http_answer(body, headers=(f"Content-Encoding: {encoding}",))
    half = len(body) // 2
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:half], body[half:]))
    head = f"HTTP/1.1 200 OK\r\nContent-Encoding: {encoding}\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head.encode() + chunks + b"0\r\n\r\n"


TEXT = b'{"choices": [{"text": "' + b"compressible " * 200 + b'"}]}'


@pytest.mark.parametrize(
    ("answer", "body"),
    [
        (gzip_answer(gzip.compress(TEXT)), TEXT),
        (gzip_answer(gzip.compress(TEXT), encoding="GZIP"), TEXT),
        (gzip_answer(gzip.compress(TEXT), chunked=True), TEXT),
        (gzip_answer(gzip.compress(TEXT[:100]), gzip.compress(TEXT[100:])), TEXT),  # two gzip members
        (gzip_answer(zlib.compress(TEXT), encoding="deflate"), TEXT),
        (gzip_answer(b""), b""),  # an empty body says nothing to decode
    ],
    ids=["length", "upper-case", "chunked", "two-members", "deflate", "empty"],
)
async def test_a_gzip_body_is_decoded(answer, body):
    async with RawServer(answering(answer)) as server, HttpPool(server.url, {}) as pool:
        answers = [await pool.post("/", b"{}", 5) for _ in range(2)]
    assert [a.body for a in answers] == [body, body]


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (gzip_answer(b"\x1f\x8b not gzip at all"), "does not decompress"),
        (gzip_answer(gzip.compress(TEXT)[:-10]), "does not decompress"),
        (gzip_answer(gzip.compress(TEXT), b"trailing garbage"), "does not decompress"),
        (gzip_answer(b"whatever", encoding="br"), "Content-Encoding 'br'"),
    ],
    ids=["not-gzip", "truncated", "trailing-garbage", "brotli"],
)
async def test_a_body_that_cannot_be_decoded_is_a_connection_failure(answer, message):
    async with RawServer(answering(answer)) as server:
        with pytest.raises(ConnectionFailed, match=message):
            await post_once(server.url)


# -- 4. and 5. timeouts and cancellation -------------------------------------------------------------------


def hang_or_answer(hung: asyncio.Event | None = None) -> Script:
    """``/hang`` is never answered (``hung`` is set when one arrives); anything else gets ``ok``."""

    async def script(connection: RawConnection) -> None:
        while (request := await connection.read_request()) is not None:
            if request.path == "/hang":
                if hung is not None:
                    hung.set()
            else:
                connection.writer.write(http_answer(b"ok"))

    return script


async def test_timeouts_leave_the_pool_usable_and_never_reuse_the_hung_connection():
    async with RawServer(hang_or_answer()) as server, HttpPool(server.url, {}, limit=1) as pool:
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(RequestTimeout, match="no answer within 0.2 s"):
                await pool.post("/hang", b"{}", 0.2)
            assert 0.2 <= time.monotonic() - started < 1.5
        assert (await pool.post("/ok", b"{}", 5)).body == b"ok"
        for connection in server.connections[:3]:
            await until(connection.eof)  # the pool closed each hung connection
    assert [[r.path for r in c.requests] for c in server.connections] == [["/hang"]] * 3 + [["/ok"]]


async def test_a_timeout_while_waiting_for_a_slot_gives_nothing_away():
    hung = asyncio.Event()
    async with RawServer(hang_or_answer(hung)) as server, HttpPool(server.url, {}, limit=1) as pool:
        holder = asyncio.create_task(pool.post("/hang", b"{}", 0.5))
        await until(hung)
        with pytest.raises(RequestTimeout):
            await pool.post("/ok", b"{}", 0.1)  # never gets the only connection
        with pytest.raises(RequestTimeout):
            await holder
        assert (await pool.post("/ok", b"{}", 5)).body == b"ok"
    assert [[r.path for r in c.requests] for c in server.connections] == [["/hang"], ["/ok"]]


async def test_cancelling_a_request_frees_its_slot():
    received = asyncio.Event()
    script = hang_or_answer(received)

    async with RawServer(script) as server, HttpPool(server.url, {}, limit=1) as pool:
        hung = asyncio.create_task(pool.post("/hang", b"{}", 30))
        await until(received)
        queued = asyncio.create_task(pool.post("/ok", b"{}", 30))
        cancelled_in_queue = asyncio.create_task(pool.post("/ok", b"{}", 30))
        await asyncio.sleep(0)  # both now wait for the only slot
        cancelled_in_queue.cancel()
        hung.cancel()
        for task in (hung, cancelled_in_queue):
            with pytest.raises(asyncio.CancelledError):
                await task
        async with asyncio.timeout(5):
            assert (await queued).body == b"ok"
            assert (await pool.post("/ok", b"{}", 5)).body == b"ok"
        await until(server.connections[0].eof)  # the cancelled request's connection was closed
    assert [[r.path for r in c.requests] for c in server.connections] == [["/hang"], ["/ok", "/ok"]]


async def test_a_request_cancelled_just_as_its_turn_comes_hands_the_turn_on():
    hung, release = asyncio.Event(), asyncio.Event()

    async def script(connection: RawConnection) -> None:
        while (request := await connection.read_request()) is not None:
            if request.path == "/slow":
                hung.set()
                await release.wait()
            connection.writer.write(http_answer(request.body))

    async with RawServer(script) as server, HttpPool(server.url, {}, limit=1) as pool:

        async def first() -> HttpResponse:
            answer = await pool.post("/slow", b"1", 5)
            second.cancel()  # the slot was just handed to it, and it has not run yet: it must hand it on
            return answer

        first_task = asyncio.create_task(first())
        await until(hung)
        second = asyncio.create_task(pool.post("/ok", b"2", 5))
        third = asyncio.create_task(pool.post("/ok", b"3", 2))
        await asyncio.sleep(0)  # both now wait for the only slot
        release.set()
        assert (await first_task).body == b"1"
        with pytest.raises(asyncio.CancelledError):
            await second
        assert (await third).body == b"3"
    assert [r.body for r in server.requests()] == [b"1", b"3"]


async def test_a_storm_of_timeouts_and_cancellations_leaks_no_slot():
    limit = 2
    barriers = {"/pair": asyncio.Barrier(limit), "/trio": asyncio.Barrier(limit + 1)}

    async def script(connection: RawConnection) -> None:
        while (request := await connection.read_request()) is not None:
            if request.path in barriers:  # answered only once that many such requests are in at once
                await barriers[request.path].wait()
            if request.path != "/hang":
                connection.writer.write(http_answer(request.body))

    async with RawServer(script) as server, HttpPool(server.url, {}, limit=limit) as pool:
        tasks = []
        for i in range(24):
            path, timeout = ("/hang", 0.05) if i % 3 == 0 else ("/ok", 5.0)
            tasks.append(asyncio.create_task(pool.post(path, str(i).encode(), timeout)))
            if i % 4 == 1:
                await asyncio.sleep(0)
                tasks[-1].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        # Both slots are free again (or the /pair barrier never opens) ...
        pairs = await asyncio.gather(*(pool.post("/pair", b"%d" % i, 5) for i in range(limit)))
        # ... and there are no more than two (or the /trio barrier opens).
        trio = [pool.post("/trio", b"{}", 0.3) for _ in range(limit)] + [pool.post("/trio", b"{}", 0.15)]
        trios = await asyncio.gather(*trio, return_exceptions=True)
    for i, result in enumerate(results):
        if i % 4 == 1:
            assert isinstance(result, asyncio.CancelledError | HttpResponse), (i, result)
        elif i % 3 == 0:
            assert isinstance(result, RequestTimeout), (i, result)
        else:
            assert isinstance(result, HttpResponse) and result.body == str(i).encode(), (i, result)
    assert sorted(answer.body for answer in pairs) == [b"0", b"1"]
    assert all(isinstance(result, RequestTimeout) for result in trios), trios
    assert [r.path for r in server.requests()].count("/trio") == limit


async def test_closing_the_pool_closes_its_idle_connections_and_frees_their_slots():
    async with RawServer(answering(http_answer(b"ok"))) as server:
        pool = HttpPool(server.url, {}, limit=1)
        assert (await pool.post("/", b"{}", 5)).body == b"ok"
        pool.close()
        await until(server.connections[0].eof)
        # A pool is not meant to be used once closed, but its count of connections stays true.
        assert (await pool.post("/", b"{}", 1)).body == b"ok"
        await until(server.connections[1].eof)  # not kept: the pool is closed


# -- 6. connection refused ---------------------------------------------------------------------------------


async def test_connection_refused_names_host_and_port():
    with socket.socket() as sock:
        sock.bind((HOST, 0))  # bound but not listening: a connection is refused
        port = sock.getsockname()[1]
        async with HttpPool(f"http://{HOST}:{port}/v1", {}, limit=1) as pool:
            for _ in range(2):  # the failed connection gave its slot back
                with pytest.raises(ConnectionFailed, match=f"cannot connect to 127.0.0.1:{port}"):
                    await pool.post("/chat/completions", b"{}", 5)


# -- 7. TLS ------------------------------------------------------------------------------------------------


async def test_https_to_a_server_whose_ca_is_in_ssl_cert_file(ca, trust):
    trust(ca)
    async with web_server(server_context(ca, HOST)) as url, HttpPool(url, {}) as pool:
        answers = [await pool.post("/echo", b'{"tls": true}', 5) for _ in range(3)]
    seen = [orjson.loads(answer.body) for answer in answers]
    assert [s["body"] for s in seen] == ['{"tls": true}'] * 3
    assert len({s["client_port"] for s in seen}) == 1  # kept alive over TLS too
    assert seen[0]["host"] == url.removeprefix("https://").removesuffix("/v1")


async def test_a_certificate_for_another_host_is_a_tls_failure(ca, trust):
    trust(ca)
    async with web_server(server_context(ca, "wrong.example")) as url:
        with pytest.raises(ConnectionFailed, match="TLS") as failure:
            await post_once(url, "/echo")
    assert "mismatch, certificate is not valid for '127.0.0.1'" in str(failure.value)


async def test_a_certificate_from_an_untrusted_ca_is_a_tls_failure(ca, trust):
    trust(trustme.CA())  # some other CA
    async with web_server(server_context(ca, HOST)) as url:
        with pytest.raises(ConnectionFailed, match="TLS .* failed: .*SSL_CERT_FILE"):
            await post_once(url, "/echo")


async def test_https_to_a_plain_http_server_is_a_tls_failure(web_url):
    url = web_url.replace("http://", "https://")
    with pytest.raises(ConnectionFailed, match=r"TLS with 127\.0\.0\.1:\d+ failed: .*https server"):
        await post_once(url, "/echo")


async def test_http_to_a_tls_server_is_a_connection_failure(ca, trust):
    trust(ca)
    async with web_server(server_context(ca, HOST)) as url:
        # The TLS server drops a connection that does not open with a handshake: a failure, not a timeout.
        with pytest.raises(ConnectionFailed, match="closed the connection before the answer was complete"):
            await post_once(url.replace("https://", "http://"), "/echo", timeout=5)


# -- 8. what goes on the wire ------------------------------------------------------------------------------


async def test_the_request_has_the_path_prefix_host_length_and_headers(web_url):
    body = orjson.dumps({"messages": [{"role": "user", "content": "héllo ✓"}]})
    port = web_url.split(":")[2].removesuffix("/v1")
    async with HttpPool(web_url + "/", {"Authorization": "Bearer sk-test"}) as pool:
        answer = await pool.post("/chat/completions", body, 5)
    seen = orjson.loads(answer.body)
    assert seen["path"] == "/v1/chat/completions"
    assert seen["host"] == f"127.0.0.1:{port}"
    assert seen["content_length"] == str(len(body))
    assert seen["authorization"] == "Bearer sk-test"
    assert seen["body"].encode() == body


async def test_the_raw_request_head():
    headers = {"Authorization": "Bearer k", "X-Extra": "1"}
    async with (
        RawServer(answering(http_answer(b"ok"))) as server,
        HttpPool(server.url + "/v1", headers) as pool,
    ):
        await pool.post("/completions", b"12345", 5)
    (request,) = server.requests()
    assert request.line == "POST /v1/completions HTTP/1.1"
    assert request.headers["host"] == f"127.0.0.1:{server.port}"
    assert request.headers["content-length"] == "5" and request.body == b"12345"
    assert request.headers["authorization"] == "Bearer k" and request.headers["x-extra"] == "1"
    assert request.headers["accept-encoding"] == "identity"


@pytest.mark.parametrize("value", ["Bearer sk-secret\r\n", "Bearer sk-secret\nX-Injected: 1", "Bearer ключ"])
def test_a_header_value_that_cannot_go_on_the_wire_is_refused(value):
    with pytest.raises(UsageError, match="Authorization") as failure:
        HttpPool(f"http://{HOST}:1/v1", {"Authorization": value})
    assert "sk-secret" not in str(failure.value) and "ключ" not in str(failure.value)


# -- 9. through TeacherClient, against the local teacher ----------------------------------------------------


def teacher_requests() -> list[TeacherRequest]:
    params = sampling_params(max_tokens=64, temperature=0.0)
    chat = TeacherRequest(
        api="chat", model="teacher-70b", params=params, messages=(("system", "Be brief."), ("user", "hi ✓"))
    )
    completion = TeacherRequest(api="completions", model="teacher-70b", params=params, prompt="Once upon")
    return [chat, completion]


async def test_both_http_clients_give_the_same_answers_and_rate_headers():
    knobs = TeacherKnobs(api_key="sk-test", rpm=600, tpm=1_000_000, window=60)
    results = {}
    for kind in ("builtin", "aiohttp"):
        async with (
            TeacherServer(knobs) as teacher,
            TeacherClient(teacher.base_url, "sk-test", http_client=kind) as client,
        ):
            assert client.http_client == kind
            results[kind] = [await client.send(request) for request in teacher_requests()]
            assert teacher.stats.answered == 2 and teacher.stats.unauthorized == 0
    for (answer, rate), (other_answer, other_rate) in zip(
        results["builtin"], results["aiohttp"], strict=True
    ):
        assert answer == other_answer and answer.text and answer.prompt_tokens
        assert (rate.remaining, rate.tokens_remaining) == (other_rate.remaining, other_rate.tokens_remaining)
        assert rate.remaining is not None and rate.tokens_remaining is not None
        # the window's end moves on by the time the second server answers: equal to within the test's run
        assert rate.reset_seconds == pytest.approx(other_rate.reset_seconds, abs=2.0)


async def test_both_http_clients_raise_the_same_errors():
    errors = {}
    for kind in ("builtin", "aiohttp"):
        async with TeacherServer(TeacherKnobs(api_key="sk-right", throttle_rate=1.0)) as teacher:
            async with TeacherClient(teacher.base_url, "sk-right", http_client=kind) as client:
                with pytest.raises(RateLimited) as limited:
                    await client.send(teacher_requests()[0])
            async with TeacherClient(teacher.base_url, "sk-wrong", http_client=kind) as client:
                with pytest.raises(AuthenticationError) as refused:
                    await client.send(teacher_requests()[0])
        errors[kind] = (
            limited.value.retry_after,
            str(limited.value),
            refused.value.status,
            str(refused.value),
        )
    assert errors["builtin"] == errors["aiohttp"]
    assert errors["builtin"][0] == pytest.approx(0.05) and errors["builtin"][2] == 401


async def test_both_http_clients_report_a_refused_connection_as_connection_failed():
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        url = f"http://{HOST}:{sock.getsockname()[1]}/v1"
        for kind in ("builtin", "aiohttp"):
            async with TeacherClient(url, http_client=kind) as client:
                with pytest.raises(ConnectionFailed, match=f"connection to {url}/chat/completions failed"):
                    await client.send(teacher_requests()[0])


PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture
def no_proxy_env(monkeypatch):
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("env", "url", "chosen"),
    [
        ({}, "http://127.0.0.1:8000/v1", "builtin"),
        ({"HTTP_PROXY": "http://proxy.example:3128"}, "http://10.0.0.5:8000/v1", "aiohttp"),
        ({"HTTPS_PROXY": "http://proxy.example:3128"}, "https://api.together.xyz/v1", "aiohttp"),
        ({"https_proxy": "http://proxy.example:3128"}, "https://api.together.xyz/v1", "aiohttp"),
        ({"HTTPS_PROXY": "http://proxy.example:3128"}, "http://10.0.0.5:8000/v1", "builtin"),
        ({"HTTP_PROXY": "http://proxy.example:3128"}, "https://api.together.xyz/v1", "builtin"),
        (
            {"HTTPS_PROXY": "http://proxy.example:3128", "NO_PROXY": "localhost,.together.xyz"},
            "https://api.together.xyz/v1",
            "builtin",
        ),
        (
            {"HTTP_PROXY": "http://proxy.example:3128", "NO_PROXY": "127.0.0.1"},
            "http://127.0.0.1:8000/v1",
            "builtin",
        ),
        ({"HTTP_PROXY": "http://proxy.example:3128", "NO_PROXY": "*"}, "http://10.0.0.5:8000/v1", "builtin"),
    ],
)
def test_auto_picks_aiohttp_only_where_a_proxy_applies(no_proxy_env, env, url, chosen):
    for name, value in env.items():
        no_proxy_env.setenv(name, value)
    assert chosen_http_client("auto", url) == chosen
    assert TeacherClient(url, http_client="auto").http_client == chosen


def test_an_explicit_http_client_is_kept_and_a_wrong_one_refused(no_proxy_env):
    no_proxy_env.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert chosen_http_client("builtin", "https://api.together.xyz/v1") == "builtin"
    assert chosen_http_client("aiohttp", "http://127.0.0.1:8000/v1") == "aiohttp"
    with pytest.raises(UsageError, match="--http-client curl"):
        chosen_http_client("curl", "http://127.0.0.1:8000/v1")


async def test_under_auto_a_proxy_variable_sends_the_calls_through_that_proxy(monkeypatch):
    # The teacher stands in for the proxy: it is named by HTTP_PROXY, while --base-url names a host that does not
    # resolve, so an answer can only come through the proxy.
    async with TeacherServer(TeacherKnobs()) as teacher:
        proxy = teacher.base_url.removesuffix("/v1")
        monkeypatch.setenv("HTTP_PROXY", proxy)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        async with TeacherClient("http://teacher.invalid/v1", http_client="auto") as client:
            assert client.http_client == "aiohttp"
            answer, _ = await client.send(teacher_requests()[0])
        assert answer.text and teacher.stats.answered == 1
