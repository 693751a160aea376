"""A bundled server stops within seconds even while a client holds an exchange open (a CI failure: 10 s and out)."""

from __future__ import annotations

import socket
import time

from distill.servers import loopback
from distill.servers.together.clock import ManualClock
from distill.servers.together.server import FakeTogether


def test_a_server_stops_while_a_refused_upload_holds_its_connection():
    # the SDK's upload with a wrong key: refused (401) before its body ended, the connection left open by the client
    with socket.socket() as client:
        with FakeTogether(api_keys={"right"}, clock=ManualClock()).in_thread() as server:
            client.connect(("127.0.0.1", server.port))
            head = "POST /v1/files/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n"
            client.sendall(f"{head}Content-Length: 10000000\r\n\r\n".encode() + b"x" * 100_000)
            assert client.recv(64).startswith(b"HTTP/1.1 401")
            stopping = time.perf_counter()
        assert time.perf_counter() - stopping < loopback.SHUTDOWN_SECONDS + 2
