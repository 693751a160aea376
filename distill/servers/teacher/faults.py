"""Reproducible faults: which requests fail, and how each kind of failure is delivered.

A request's fate is a function of ``(seed, request hash, attempt)``, where ``attempt`` counts how many times
the server had already admitted that same request (past auth, validation and the rate limit). So a run replays the same faults, and a client that sends
a failed request again rolls a fresh draw (or, under ``fail_first_attempts``, succeeds after N tries).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import socket
import struct

import orjson
from aiohttp import web

from .knobs import TeacherKnobs

_SCALE = float(1 << 64)


def draw(seed: int, request_hash: str, attempt: int, salt: str) -> float:
    """A uniform number in [0, 1) fixed by its arguments."""
    digest = hashlib.blake2b(f"{seed}:{request_hash}:{attempt}:{salt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def has_faults(knobs: TeacherKnobs) -> bool:
    """Whether any request can be faulted under ``knobs`` (lets the server skip the draw)."""
    return knobs.fail_first_attempts > 0 or any(knobs.fault_rates().values())


def pick_fault(knobs: TeacherKnobs, request_hash: str, attempt: int) -> str | None:
    """The fault kind this attempt of this request gets, or ``None`` for a proper answer."""
    if attempt < knobs.fail_first_attempts:
        return knobs.fail_first_kind
    u = draw(knobs.seed, request_hash, attempt, "fault")
    bound = 0.0
    for kind, rate in knobs.fault_rates().items():
        bound += rate
        if u < bound:
            return kind
    return None


def jitter(knobs: TeacherKnobs, request_hash: str, attempt: int) -> float:
    """Extra latency for this attempt, uniform in [0, ``latency_jitter``)."""
    return knobs.latency_jitter * draw(knobs.seed, request_hash, attempt, "jitter")


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> bytes:
    """An OpenAI-style error object."""
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


def json_response(status: int, body: bytes, headers: dict[str, str]) -> web.Response:
    return web.Response(status=status, body=body, headers=headers, content_type="application/json")


async def deliver(
    kind: str,
    knobs: TeacherKnobs,
    request: web.Request,
    answer: dict,
    request_hash: str,
    attempt: int,
    headers: dict[str, str],
) -> web.StreamResponse:
    """Answer ``request`` with fault ``kind`` instead of ``answer``."""
    if kind == "server_error":
        status = 500 if draw(knobs.seed, request_hash, attempt, "status") < 0.5 else 503
        message = "internal server error" if status == 500 else "the model is overloaded, try again later"
        return json_response(status, error_body(message, "server_error"), headers)
    if kind == "throttle":
        wait = knobs.throttle_retry_after
        throttle_headers = {**headers, "retry-after-ms": str(round(wait * 1000))}
        if knobs.retry_after:
            throttle_headers["Retry-After"] = str(max(1, math.ceil(wait)))
        body = error_body("You have been rate limited, try again later", "dynamic_request_limited")
        return json_response(429, body, throttle_headers)
    if kind == "truncated":
        full = orjson.dumps(answer)
        return json_response(200, full[: len(full) // 2], headers)
    if kind == "empty":
        return json_response(200, orjson.dumps({**answer, "choices": []}), headers)
    if kind == "hang":
        await asyncio.sleep(knobs.hang_seconds)
        return json_response(504, error_body("the teacher hung", "server_error"), headers)
    return reset_connection(request)


def reset_connection(request: web.Request) -> web.Response:
    """Close the connection with a TCP reset (SO_LINGER 0) and no answer at all."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    # Nothing reaches the client: the transport is gone. aiohttp drops this response quietly.
    return web.Response(status=500)
