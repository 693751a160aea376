"""``from_checkpoint`` in a fake job body: ``JOB_ID`` or ``OUTPUT_MODEL_NAME``, optionally ``:STEP``."""

from __future__ import annotations

from typing import Any

from .limits import BadRequest
from .store import FakeJob


def resolve_checkpoint(body: dict[str, Any], jobs: dict[str, FakeJob]) -> None:
    """Give a body that continues from a checkpoint the base model of the job it names (as the service does)."""
    reference = body.get("from_checkpoint")
    if not reference or body.get("model"):
        return
    name = str(reference).split(":", 1)[0]
    for job in jobs.values():
        if name in (job.id, job.output_name):
            if job.status != "completed":
                raise BadRequest(
                    f"from_checkpoint {reference}: job {job.id} is {job.status}", "from_checkpoint"
                )
            body["model"] = job.body["model"]
            return
    raise BadRequest(f"from_checkpoint {reference}: no such job or model", "from_checkpoint")
