"""A small HTTP/1.1 client for one API host: a pool of keep-alive connections, one request at a time on each.

The engine sends thousands of small JSON POSTs a second to one host; a general client's per-request machinery
(URL objects, header multidicts, cookie jars, tracing, timers, stream readers) costs more CPU than everything
else the engine does. This client does only what that traffic needs, on :mod:`asyncio` protocols: it writes a
request whose head is rendered once per pool, and parses the answer (status line, headers, a body framed by
``Content-Length``, ``chunked`` or the end of the connection) straight from the bytes received. TLS is asyncio's
(``ssl.create_default_context()``: the system's certificate store, ``SSL_CERT_FILE``/``SSL_CERT_DIR``).

Every failure is an :class:`~distill.errors.ConnectionFailed` (the connection broke, or what came back is not
HTTP) or a :class:`~distill.errors.RequestTimeout`; both are transient, so the engine's retry policy sends the
request again on a fresh connection. A connection is reused only after a complete, well-framed answer. The one
failure the pool handles itself is a kept-alive connection that the server closed as the request went out (its
keep-alive timeout): the request is sent once more, on a new connection.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import zlib
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import ConnectionFailed, RequestTimeout, UsageError

MAX_HEAD = 64 * 1024
MAX_BODY = 256 * 1024 * 1024
MAX_CHUNK_LINE = 4 * 1024  # a chunk-size line, extensions included
HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A complete answer: ``headers`` has lower-case names (a repeated header's values joined by ", ")."""

    status: int
    headers: dict[str, str]
    body: bytes


class ProtocolViolation(Exception):
    """What the server sent is not a well-framed HTTP/1.1 answer."""


class StaleConnection(ConnectionFailed):
    """A kept-alive connection ended cleanly before one byte of the answer: the server's idle close."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection: parses the answer to the request written on it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = True
        self.answers = 0  # complete answers this connection carried
        self._received = False  # whether any byte of the current answer came
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
        self._received = True
        self._buffer += data
        try:
            self._parse()
        except ProtocolViolation as e:
            self._fail(ConnectionFailed(f"the server's answer is not valid HTTP/1.1: {e}"))

    def eof_received(self) -> bool:
        self._finish_at_close(clean=True)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._finish_at_close(clean=exc is None)

    # -- one request --------------------------------------------------------------------------------------

    def send(self, data: list[bytes]) -> asyncio.Future[HttpResponse]:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._headers = None
        self._received = False
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
            if len(buffer) >= 5 and not buffer.startswith(b"HTTP/"):
                raise _bad_status_line(buffer)  # not HTTP at all: do not wait for a head that never comes
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
            raise _bad_status_line(lines[0])
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
        coding = headers.get("transfer-encoding", "").lower()
        if coding not in ("", "chunked", "identity"):
            raise ProtocolViolation(f"Transfer-Encoding {coding[:40]!r}")  # e.g. 'gzip, chunked'
        self._chunked = coding == "chunked"
        self._body.clear()
        if status in (204, 304):
            self._length = 0
        elif self._chunked:
            self._length = None
        elif "content-length" in headers:
            length = headers["content-length"]
            if not (length.isascii() and length.isdigit()):
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
                if len(buffer) > MAX_CHUNK_LINE:
                    raise ProtocolViolation("a chunk size line longer than 4 KiB")
                return
            size_text = bytes(buffer[:end]).split(b";", 1)[0].strip()
            if not size_text or not HEX_DIGITS.issuperset(size_text):  # int() would take '-2', '0x2', '1_0'
                raise ProtocolViolation(f"chunk size {size_text[:20]!r}")
            size = int(size_text, 16)
            if size == 0:  # the last chunk; then optional trailer lines and an empty line
                self._finish_chunks(bytes(buffer[end + 2 :]))
                return
            if len(buffer) < end + 2 + size + 2:
                return
            if buffer[end + 2 + size : end + 4 + size] != b"\r\n":
                raise ProtocolViolation("a chunk not followed by CRLF")
            self._body += buffer[end + 2 : end + 2 + size]
            if len(self._body) > MAX_BODY:
                raise ProtocolViolation("a body longer than 256 MiB")
            del buffer[: end + 4 + size]

    def _finish_chunks(self, rest: bytes) -> None:
        """After the last chunk: complete once the trailers' empty line is in ``rest``."""
        if rest.startswith(b"\r\n"):
            end = 2
        else:
            end = rest.find(b"\r\n\r\n")
            if end < 0:
                if len(rest) > MAX_HEAD:
                    raise ProtocolViolation("trailers longer than 64 KiB")
                return
            end += 4
        if len(rest) > end:
            raise ProtocolViolation("bytes after the last chunk")
        self._complete(bytes(self._body))

    def _complete(self, body: bytes) -> None:
        assert self._headers is not None
        encoding = self._headers.get("content-encoding", "identity").lower()
        if encoding in ("gzip", "deflate", "x-gzip"):
            try:
                body = _decompressed(body)
            except zlib.error as e:
                self._fail(ConnectionFailed(f"the server's {encoding} body does not decompress: {e}"))
                return
        elif encoding != "identity":
            self._fail(ConnectionFailed(f"the server answered with Content-Encoding {encoding!r}"))
            return
        self._buffer.clear()
        self.answers += 1
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(HttpResponse(self._status, self._headers, body))
        if not self.reusable:
            self._close()

    def _finish_at_close(self, clean: bool) -> None:
        self.reusable = False
        if self._waiter is None or self._waiter.done():
            return
        if self._headers is not None and self._length is None and not self._chunked:
            self._complete(bytes(self._buffer))  # framed by the end of the connection
        elif clean and self.answers and not self._received:
            # What a server's keep-alive timeout looks like when the request crossed its FIN: HttpPool.post
            # sends the request once more. (A reset, or any byte of an answer, is a plain failure.)
            self._fail(StaleConnection("the server closed the kept-alive connection before the answer"))
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
        self._head_fields = header_lines(fixed)
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
        self._open -= len(self._idle)
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
        request = [head, body]
        connection: _Connection | None = None
        try:
            async with asyncio.timeout(timeout):
                connection = await self._acquire()
                try:
                    response = await connection.send(request)
                except StaleConnection:
                    # The server closed this idle connection as the request went out, so it most likely never
                    # read it: send it once more, on a new connection in the same slot. (The engine would
                    # retry the ConnectionFailed anyway, at the cost of an attempt and a backoff.)
                    connection = None
                    connection = await self._connect_in_slot()
                    response = await connection.send(request)
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
                return await self._connect_in_slot()
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # pass the turn on
                raise

    async def _connect_in_slot(self) -> _Connection:
        """A new connection in a slot already counted in ``_open``; the slot is given back if connecting fails."""
        try:
            return await self._connect()
        except BaseException:
            self._open -= 1
            self._wake_one()
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
        except ssl.SSLCertVerificationError as e:
            raise ConnectionFailed(
                f"TLS with {self.host}:{self.port} failed: {e.verify_message}; the server's certificate must be "
                "trusted by the system's certificate store or by the CA file SSL_CERT_FILE names"
            ) from None
        except ssl.SSLError as e:
            raise ConnectionFailed(
                f"TLS with {self.host}:{self.port} failed: {e.reason or e}; is it an https server (--base-url)?"
            ) from None
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


def _bad_status_line(data: bytes | bytearray) -> ProtocolViolation:
    line = bytes(data[:80]).split(b"\r\n", 1)[0]
    return ProtocolViolation(f"status line {line!r}; is --base-url right (http:// or https://, host, port)?")


def _decompressed(body: bytes) -> bytes:
    """``body`` decoded: one or more gzip members, or a zlib stream; a zlib.error unless all of it decodes."""
    parts = []
    while body:
        decompressor = zlib.decompressobj(47)  # 32 + 15: a gzip or zlib header, detected
        parts.append(decompressor.decompress(body))
        if not decompressor.eof:
            raise zlib.error("the compressed stream is truncated")
        body = decompressor.unused_data
    return b"".join(parts)


def header_lines(fields: dict[str, str]) -> bytes:
    """``Name: value`` lines; a UsageError (never showing the value) for one that would break the request."""
    lines = []
    for name, value in fields.items():
        text = f"{name}: {value}"
        if "\r" in text or "\n" in text or "\0" in text or max(map(ord, text)) > 0xFF:
            raise UsageError(
                f"the {name} header has a line break or a character outside Latin-1 in its value; if it is "
                "Authorization, check the API key in TOGETHER_API_KEY (or the variable --api-key-env names)"
            )
        lines.append(text.encode("latin-1") + b"\r\n")
    return b"".join(lines)
