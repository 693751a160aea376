"""What the fake service holds: uploaded files and fine-tune jobs, and how a job moves on the clock.

A job is a *schedule*: a list of (time, new status, event) entries fixed when it is created. Reading a job first
applies every entry whose time has come, so a job moves pending -> queued -> running -> completed (or error) by
itself as the clock advances, one state per ``seconds_per_state``, appending its events as it goes. Cancelling
replaces the rest of the schedule with cancel_requested now and cancelled one state later.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

from .clock import Clock

FAIL_MARKER = "fake-error"
"""A base model or training file whose name contains this ends in ``error`` instead of ``completed``."""

INVALID_MARKER = "fake-invalid"
"""An uploaded file whose name contains this fails the service's check (a rule the local check does not know)."""

TERMINAL = frozenset({"completed", "cancelled", "error", "user_error"})
FAKE_USER = "fake-user"


@dataclass(slots=True)
class FakeFile:
    id: str
    filename: str
    purpose: str
    file_type: str
    checksum: str
    upload_token: str
    created_at: float
    content: bytes | None = None
    report: dict[str, Any] | None = None
    processed_at: float | None = None

    def status(self, now: float, processing_seconds: float) -> str | None:
        """PENDING until preprocessed, RUNNING while the check runs, then COMPLETED or INVALID_FORMAT."""
        if self.processed_at is None:
            return "PENDING"
        if now < self.processed_at + processing_seconds:
            return "RUNNING"
        if self.report is None:
            return "COMPLETED"
        return "COMPLETED" if self.report["valid"] else "INVALID_FORMAT"


@dataclass(slots=True)
class Scheduled:
    at: float
    status: str | None
    event_type: str
    message: str
    level: str = "info"


@dataclass(slots=True)
class FakeJob:
    id: str
    body: dict[str, Any]
    batch_size: int
    output_name: str
    created_at: float
    line_count: int
    schedule: list[Scheduled]
    status: str = "pending"
    updated_at: float = 0.0
    events: list[dict[str, Any]] = field(default_factory=list)

    def advance(self, now: float, clock: Clock) -> None:
        """Apply every scheduled entry that is due."""
        while self.schedule and self.schedule[0].at <= now:
            entry = self.schedule.pop(0)
            if entry.status is not None:
                self.status = entry.status
                self.updated_at = entry.at
            self.events.append(
                {
                    "object": "fine-tune-event",
                    "created_at": clock.iso(entry.at),
                    "message": entry.message,
                    "type": entry.event_type,
                    "level": entry.level,
                    "hash": hashlib.sha256(f"{self.id}:{len(self.events)}".encode()).hexdigest()[:16],
                }
            )


def output_model_name(model: str, suffix: str | None) -> str:
    """``<user>/<base model>-<suffix>-<8 hex>``, the shape the service gives fine-tuned models."""
    parts = [model.rsplit("/", 1)[-1]]
    if suffix:
        parts.append(suffix)
    parts.append(secrets.token_hex(4))
    return f"{FAKE_USER}/{'-'.join(parts)}"


def job_schedule(
    start: float, step: float, *, n_epochs: int, n_checkpoints: int, fails: bool, wandb: bool
) -> list[Scheduled]:
    """The life of a job created at ``start``: one state per ``step`` seconds, running events spread out."""
    schedule = [
        Scheduled(start, "pending", "job_pending", "Fine-tune request created"),
        Scheduled(start + step, "queued", "job_pending", "Job queued for training"),
        Scheduled(start + 2 * step, "running", "job_start", "Job started"),
        Scheduled(start + 2 * step, None, "model_downloading", "Downloading model"),
        Scheduled(start + 2 * step, None, "training_data_downloading", "Downloading training data"),
    ]
    if wandb:
        schedule.append(Scheduled(start + 2 * step, None, "wandb_init", "Weights & Biases run initialised"))
    schedule.append(Scheduled(start + 2 * step, None, "training_start", "Training started"))
    if fails:
        schedule.append(
            Scheduled(
                start + 3 * step, "error", "job_error", "Training failed (simulated by the fake)", "error"
            )
        )
        return schedule
    for epoch in range(1, n_epochs + 1):
        at = start + 2 * step + step * epoch / (n_epochs + 1)
        schedule.append(Scheduled(at, None, "epoch_complete", f"Epoch {epoch}/{n_epochs} completed"))
    schedule.append(
        Scheduled(start + 3 * step, None, "checkpoint_save", f"Saved {n_checkpoints} checkpoint(s)")
    )
    schedule.append(Scheduled(start + 3 * step, None, "training_complete", "Training completed"))
    schedule.append(Scheduled(start + 3 * step, None, "model_upload_complete", "Model uploaded"))
    schedule.append(Scheduled(start + 3 * step, "completed", "job_complete", "Job finished"))
    return schedule


def cancel_schedule(now: float, step: float) -> list[Scheduled]:
    """What remains of a job's life once it is cancelled."""
    return [
        Scheduled(now, "cancel_requested", "cancel_requested", "Cancellation requested"),
        Scheduled(now + step, "cancelled", "job_stopped", "Job cancelled"),
    ]


def new_file_id() -> str:
    return f"file-{uuid.uuid4()}"


def new_job_id() -> str:
    return f"ft-{uuid.uuid4()}"
