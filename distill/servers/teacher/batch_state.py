"""What the local teacher's batch endpoints keep: the knobs, the stored files and batches, and the counters.

The service working the batches off is :mod:`.batch`; the routes are :mod:`.batch_routes`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from distill.errors import UsageError

from .knobs import TeacherKnobs

TOGETHER = "together"
OPENAI = "openai"
OPENAI_PREFIX = "/openai/v1"
TERMINAL = frozenset(("COMPLETED", "FAILED", "EXPIRED", "CANCELLED"))
ENDPOINTS = {TOGETHER: ("/v1/chat/completions",), OPENAI: ("/v1/chat/completions", "/v1/completions")}
FILE_PURPOSE = {TOGETHER: "batch-api", OPENAI: "batch"}
MAX_CUSTOM_ID = 64


class Teacher(Protocol):
    """What the batch service needs of the teacher it answers for: its knobs, and a place for the service."""

    knobs: TeacherKnobs
    batch: Any  # the BatchService answering for it


@dataclass(frozen=True, slots=True)
class BatchKnobs:
    """How the fake Batch API behaves. ``BatchKnobs()`` finishes every batch at once with every answer."""

    validating_seconds: float = 0.0  # how long a new batch stays VALIDATING
    seconds_per_request: float = 0.0  # processing time of each line
    hold: bool = False  # batches stay IN_PROGRESS, nothing answered, until this is switched off
    max_requests: int = 50_000  # lines a batch file may hold (Together and OpenAI: 50,000)
    max_bytes: int = 100_000_000  # bytes a batch file may hold (Together 100 MB, OpenAI 200 MB)
    expire_after: int | None = None  # a batch answers at most this many lines, then ends EXPIRED
    fail_first: int = 0  # the first N submissions of every custom_id get a 500 error line

    def replace(self, **changes: Any) -> BatchKnobs:
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise UsageError(
                f"unknown batch knob(s): {', '.join(sorted(unknown))}; known: {', '.join(names)}"
            )
        return dataclasses.replace(self, **changes)


@dataclass(slots=True)
class StoredFile:
    id: str
    flavour: str
    filename: str
    purpose: str
    checksum: str = ""
    data: bytes | None = None
    created: float = field(default_factory=time.time)


@dataclass(slots=True)
class FakeBatch:
    id: str
    flavour: str
    endpoint: str
    input_file_id: str
    created: float = field(default_factory=time.time)
    status: str = "VALIDATING"
    cancel_requested: bool = False
    total: int = 0
    done: int = 0
    failed: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    error: str | None = None
    finished: float | None = None


@dataclass(slots=True)
class BatchStats:
    uploads: int = 0
    batches_created: int = 0
    batches_cancelled: int = 0
    requests_answered: int = 0
    submissions: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "uploads": self.uploads,
            "batches_created": self.batches_created,
            "batches_cancelled": self.batches_cancelled,
            "requests_answered": self.requests_answered,
            "submissions": dict(self.submissions),
        }


class BadRequest(Exception):
    """A request the fake API answers with 400; ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
