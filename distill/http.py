"""A small HTTP/1.1 client for one API host: a pool of keep-alive connections, one request at a time on each.

The engine sends thousands of small JSON POSTs a second to one host; a general client's per-request machinery
(URL objects, header multidicts, cookie jars, tracing, timers, stream readers) costs more CPU than everything
else the engine does. This client does only what that traffic needs, on :mod:`asyncio` protocols: it writes a
request whose head is rendered once per pool, and parses the answer (status line, headers, a body framed by
``Content-Length``, ``chunked`` or the end of the connection) straight from the bytes received. TLS is asyncio's
(``ssl.create_default_context()``: the system's certificate store, ``SSL_CERT_FILE``/``SSL_CERT_DIR``).

Every failure is an :class:`~distill.errors.ConnectionFailed` (the connection broke, or what came back is not
HTTP) or a :class:`~distill.errors.RequestTimeout`; both are transient, so the engine's retry policy sends the
request again on a fresh connection. A connection is reused only after a complete, well-framed answer.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import zlib
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import ConnectionFailed, RequestTimeout

MAX_HEAD = 64 * 1024
MAX_BODY = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A complete answer: ``headers`` has lower-case names (a repeated header's values joined by ", ")."""

    status: int
    headers: dict[str, str]
    body: bytes


class ProtocolViolation(Exception):
    """What the server sent is not a well-framed HTTP/1.1 answer."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection: parses the answer to the request written on it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = True
        self._buffer = bytearray()
        self._waiter: asyncio.Future[HttpResponse] | None = None
        self._status = 0
        self._headers: dict[str, str] | None = None
        self._length: int | None = None  # body bytes expected; None: chunked or until the connection closes
        self._chunked = False
        self._body = bytearray()

    # -- asyncio.Protocol ---------------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self.reusable = False  # bytes nobody asked for: the connection's framing is lost
            self._close()
            return
        self._buffer += data
        try:
            self._parse()
        except ProtocolViolation as e:
            self._fail(ConnectionFailed(f"the server's answer is not valid HTTP/1.1: {e}"))

    def eof_received(self) -> bool:
        self._finish_at_close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._finish_at_close()

    # -- one request --------------------------------------------------------------------------------------

    def send(self, data: list[bytes]) -> asyncio.Future[HttpResponse]:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._headers = None
        self._buffer.clear()
        self.transport.writelines(data)
        return self._waiter

    def abandon(self) -> None:
        """The caller stopped waiting (timeout, cancellation): the answer may still come, so never reuse this."""
        self.reusable = False
        self._close()

    def _parse(self) -> None:
        buffer = self._buffer
        while self._headers is None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    raise ProtocolViolation("a head longer than 64 KiB")
                return
            self._read_head(bytes(buffer[:end]))
            del buffer[: end + 4]
        if self._chunked:
            self._parse_chunks()
        elif self._length is not None:
            if len(buffer) >= self._length:
                if len(buffer) > self._length:
                    raise ProtocolViolation("more body bytes than Content-Length")
                self._complete(bytes(buffer))
        elif len(buffer) > MAX_BODY:
            raise ProtocolViolation("a body longer than 256 MiB")

    def _read_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ProtocolViolation(f"status line {lines[0][:80]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise ProtocolViolation(f"header line {line[:80]!r}")
            key = name.decode("latin-1").lower()
            text = value.strip().decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        if 100 <= status < 200:
            return  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        self._status = status
        self._headers = headers
        connection = headers.get("connection", "").lower()
        if "close" in connection or (parts[0] == b"HTTP/1.0" and "keep-alive" not in connection):
            self.reusable = False
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self._body.clear()
        if status in (204, 304):
            self._length = 0
        elif self._chunked:
            self._length = None
        elif "content-length" in headers:
            length = headers["content-length"]
            if not length.isdigit():
                raise ProtocolViolation(f"Content-Length {length[:40]!r}")
            self._length = int(length)
            if self._length > MAX_BODY:
                raise ProtocolViolation("a body longer than 256 MiB")
        else:
            self._length = None  # the body ends when the server closes the connection
            self.reusable = False

    def _parse_chunks(self) -> None:
        buffer = self._buffer
        while True:
            end = buffer.find(b"\r\n")
            if end < 0:
                return
            size_text = bytes(buffer[:end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ProtocolViolation(f"chunk size {size_text[:20]!r}") from None
            if size == 0:  # the last chunk; then optional trailer lines and an empty line
                rest = bytes(buffer[end + 2 :])
                if not rest.startswith(b"\r\n") and b"\r\n\r\n" not in rest:
                    return
                self._complete(bytes(self._body))
                return
            if len(buffer) < end + 2 + size + 2:
                return
            if buffer[end + 2 + size : end + 4 + size] != b"\r\n":
                raise ProtocolViolation("a chunk not followed by CRLF")
            self._body += buffer[end + 2 : end + 2 + size]
            if len(self._body) > MAX_BODY:
                raise ProtocolViolation("a body longer than 256 MiB")
            del buffer[: end + 4 + size]

    def _complete(self, body: bytes) -> None:
        assert self._headers is not None
        encoding = self._headers.get("content-encoding", "identity").lower()
        if encoding in ("gzip", "deflate", "x-gzip"):
            try:
                body = zlib.decompress(body, 47)  # 32 + 15: a gzip or zlib header, detected
            except zlib.error as e:
                self._fail(ConnectionFailed(f"the server's {encoding} body does not decompress: {e}"))
                return
        elif encoding != "identity":
            self._fail(ConnectionFailed(f"the server answered with Content-Encoding {encoding!r}"))
            return
        self._buffer.clear()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(HttpResponse(self._status, self._headers, body))
        if not self.reusable:
            self._close()

    def _finish_at_close(self) -> None:
        self.reusable = False
        if self._waiter is None or self._waiter.done():
            return
        if self._headers is not None and self._length is None and not self._chunked:
            self._complete(bytes(self._buffer))  # framed by the end of the connection
        else:
            self._fail(ConnectionFailed("the server closed the connection before the answer was complete"))

    def _fail(self, error: Exception) -> None:
        self.reusable = False
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self._close()

    def _close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()


class HttpPool:
    """Keep-alive connections to the host of ``base_url``, at most ``limit`` of them open at once.

    ``await pool.post(path, body, timeout)`` returns the :class:`HttpResponse`; ``headers`` are sent with every
    request. Use as ``async with HttpPool(...) as pool`` (closing aborts the idle connections).
    """

    def __init__(self, base_url: str, headers: dict[str, str], *, limit: int = 64) -> None:
        url = urlsplit(base_url)
        self.scheme = url.scheme
        self.host = url.hostname or ""
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.prefix = url.path.rstrip("/")
        self.limit = limit
        default_port = (url.scheme == "https" and self.port == 443) or (
            url.scheme == "http" and self.port == 80
        )
        host = f"[{self.host}]" if ":" in self.host else self.host
        authority = host if default_port else f"{host}:{self.port}"
        fixed = {"Host": authority, "Accept": "application/json", "Accept-Encoding": "identity", **headers}
        self._head_fields = "".join(f"{name}: {value}\r\n" for name, value in fixed.items()).encode("latin-1")
        self._ssl = ssl.create_default_context() if url.scheme == "https" else None
        self._idle: list[_Connection] = []
        self._open = 0
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False

    async def __aenter__(self) -> HttpPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        for connection in self._idle:
            connection.abandon()
        self._idle.clear()

    async def post(self, path: str, body: bytes, timeout: float) -> HttpResponse:
        """POST ``body`` (JSON) to ``path`` under the base URL's path; RequestTimeout after ``timeout`` s."""
        head = (
            b"POST "
            + (self.prefix + path).encode()
            + b" HTTP/1.1\r\n"
            + self._head_fields
            + b"Content-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
        )
        connection: _Connection | None = None
        try:
            async with asyncio.timeout(timeout):
                connection = await self._acquire()
                response = await connection.send([head, body])
        except BaseException as error:
            if connection is not None:
                connection.abandon()  # the answer may still arrive: this connection's framing is lost
                self._release(connection)
            if isinstance(error, TimeoutError):
                raise RequestTimeout(f"no answer within {timeout:g} s") from None
            raise
        self._release(connection)
        return response

    async def _acquire(self) -> _Connection:
        while True:
            while self._idle:
                connection = self._idle.pop()
                if not connection.closed and connection.reusable:
                    return connection
                self._open -= 1
            if self._open < self.limit:
                self._open += 1
                try:
                    return await self._connect()
                except BaseException:
                    self._open -= 1
                    self._wake_one()
                    raise
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # pass the turn on
                raise

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(
                _Connection,
                self.host,
                self.port,
                ssl=self._ssl,
                server_hostname=self.host if self._ssl else None,
            )
        except ssl.SSLError as e:
            raise ConnectionFailed(f"TLS with {self.host}:{self.port} failed: {e.reason or e}") from None
        except OSError as e:
            raise ConnectionFailed(
                f"cannot connect to {self.host}:{self.port}: {e.strerror or type(e).__name__}"
            ) from None
        return connection

    def _release(self, connection: _Connection) -> None:
        if self._closed or connection.closed or not connection.reusable:
            connection.abandon()
            self._open -= 1
        else:
            self._idle.append(connection)
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
