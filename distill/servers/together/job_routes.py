"""The fine-tuning API of the fake Together service: model limits, price estimates, and jobs (create, list,
retrieve, cancel, events, checkpoints) moving through their states on the fake's clock (:mod:`.store`).

:class:`FineTuneRoutes` holds the handlers; :class:`~.server.FakeTogether`, whose state they work on, is one.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .checkpoints import resolve_checkpoint
from .file_routes import FakeState, api_error, not_found
from .limits import BadRequest, check_job_body, model_limits
from .store import (
    FAIL_MARKER,
    FAKE_USER,
    TERMINAL,
    FakeFile,
    FakeJob,
    cancel_schedule,
    job_schedule,
    new_job_id,
    output_model_name,
)

# The fake's price: dollars per million trained tokens, about what an 8B LoRA job costs.
PRICE_PER_MILLION_TOKENS = 0.48


def _is_full(body: dict[str, Any]) -> bool:
    return (body.get("training_type") or {}).get("type") == "Full"


class FineTuneRoutes(FakeState):
    """The handlers of ``/v1/fine-tunes``, over a :class:`~.server.FakeTogether`'s jobs and files."""

    seconds_per_state: float
    models: set[str] | None
    error_models: set[str]
    create_bodies: list[dict[str, Any]]

    def _limits_orapi_error(self, model: Any) -> dict[str, Any]:
        if not isinstance(model, str) or not model:
            raise BadRequest("model is required", "model")
        if self.models is not None and model not in self.models:
            raise BadRequest(f"model {model} is not available for fine-tuning", "model")
        return model_limits(model)

    async def limits(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(self._limits_orapi_error(request.query.get("model_name")))
        except BadRequest as e:
            return api_error(404, str(e), param=e.param)

    async def estimate_price(self, request: web.Request) -> web.Response:
        body = await request.json()
        f = self.files.get(body.get("training_file", ""))
        if f is None or f.content is None:
            return api_error(400, "training_file not found", param="training_file")
        if f.status(self.clock.now(), self.file_processing_seconds) != "COMPLETED":
            return web.json_response(
                {"estimation_available": False, "unavailable_reason": "train_file_invalid"}
            )
        tokens = len(f.content) / 4 * int(body.get("n_epochs") or 1)
        return web.json_response(
            {
                "estimation_available": True,
                "allowed_to_proceed": True,
                "estimated_total_price": round(tokens / 1e6 * PRICE_PER_MILLION_TOKENS, 6),
                "estimated_train_token_count": tokens,
                "estimated_eval_token_count": 0,
                "user_limit": 100.0,
            }
        )

    def _usable_file(self, file_id: Any, param: str) -> FakeFile:
        f = self.files.get(file_id) if isinstance(file_id, str) else None
        if f is None:
            raise BadRequest(f"{param} {file_id!r} not found", param)
        status = f.status(self.clock.now(), self.file_processing_seconds)
        if f.purpose != "fine-tune" or status != "COMPLETED":
            raise BadRequest(f"{param} {f.id} is not a validated fine-tune file (status {status})", param)
        return f

    async def create_job(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.create_bodies.append(body)
        try:
            resolve_checkpoint(body, self.jobs)
            limits = self._limits_orapi_error(body.get("model"))
            training = self._usable_file(body.get("training_file"), "training_file")
            if body.get("validation_file"):
                self._usable_file(body["validation_file"], "validation_file")
            batch_size = check_job_body(body, limits, has_validation_file=bool(body.get("validation_file")))
        except BadRequest as e:
            return api_error(400, str(e), param=e.param)
        now = self.clock.now()
        fails = (
            body["model"] in self.error_models
            or FAIL_MARKER in body["model"]
            or FAIL_MARKER in training.filename
        )
        job = FakeJob(
            id=new_job_id(),
            body={k: v for k, v in body.items() if k != "wandb_key"},
            batch_size=batch_size,
            output_name=output_model_name(body["model"], body.get("suffix")),
            created_at=now,
            line_count=(training.report or {}).get("nlines", 0),
            schedule=job_schedule(
                now,
                self.seconds_per_state,
                n_epochs=int(body.get("n_epochs", 1)),
                n_checkpoints=int(body.get("n_checkpoints", 1)),
                fails=fails,
                wandb=bool(body.get("wandb_key")),
            ),
            updated_at=now,
        )
        job.advance(now, self.clock)
        self.jobs[job.id] = job
        return web.json_response(self._job_json(job, with_events=True))

    def _job(self, request: web.Request) -> FakeJob:
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            raise not_found("fine-tune job not found")
        job.advance(self.clock.now(), self.clock)
        return job

    def _job_json(self, job: FakeJob, *, with_events: bool) -> dict[str, Any]:
        body = job.body
        method = body.get("training_method") or {"method": "sft", "train_on_inputs": "auto"}
        training = self.files.get(body["training_file"])
        tokens = int(len(training.content or b"") / 4) if training else 0
        result: dict[str, Any] = {
            "id": job.id,
            "job_id": job.id,
            "status": job.status,
            "created_at": self.clock.iso(job.created_at),
            "updated_at": self.clock.iso(job.updated_at),
            "user_id": FAKE_USER,
            "owner_address": FAKE_USER,
            "model": body["model"],
            "model_output_name": job.output_name,
            "adapter_output_name": None if _is_full(body) else f"{job.output_name}-adapter",
            "training_file": body["training_file"],
            "validation_file": body.get("validation_file", ""),
            "n_epochs": body.get("n_epochs", 1),
            "n_checkpoints": body.get("n_checkpoints", 1),
            "n_evals": body.get("n_evals", 0),
            "batch_size": job.batch_size,
            "learning_rate": body.get("learning_rate", 1e-5),
            "lr_scheduler": body.get("lr_scheduler"),
            "warmup_ratio": body.get("warmup_ratio", 0.0),
            "max_grad_norm": body.get("max_grad_norm", 1.0),
            "weight_decay": body.get("weight_decay", 0.0),
            "training_type": body.get("training_type"),
            "training_method": method,
            "train_on_inputs": method.get("train_on_inputs"),
            "suffix": body.get("suffix"),
            "token_count": tokens,
            "total_price": int(tokens * int(body.get("n_epochs", 1)) * PRICE_PER_MILLION_TOKENS * 1000),
            "param_count": 8_030_261_248,
            "trainingfile_numlines": job.line_count,
            "trainingfile_size": len(training.content or b"") if training else 0,
            "epochs_completed": body.get("n_epochs", 1) if job.status == "completed" else 0,
        }
        if any(e["type"] == "wandb_init" for e in job.events):
            result["wandb_url"] = f"https://wandb.ai/{FAKE_USER}/together/runs/{job.id}"
        if with_events:
            result["events"] = list(job.events)
        return result

    async def list_jobs(self, request: web.Request) -> web.Response:
        now = self.clock.now()
        for job in self.jobs.values():
            job.advance(now, self.clock)
        return web.json_response({"data": [self._job_json(j, with_events=False) for j in self.jobs.values()]})

    async def retrieve_job(self, request: web.Request) -> web.Response:
        return web.json_response(self._job_json(self._job(request), with_events=True))

    async def cancel_job(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job.status in TERMINAL or job.status == "cancel_requested":
            return api_error(400, f"job {job.id} is {job.status} and cannot be cancelled")
        job.schedule = cancel_schedule(self.clock.now(), self.seconds_per_state)
        job.advance(self.clock.now(), self.clock)
        return web.json_response(self._job_json(job, with_events=False))

    async def job_events(self, request: web.Request) -> web.Response:
        return web.json_response({"data": list(self._job(request).events)})

    async def job_checkpoints(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job.status != "completed":
            return web.json_response({"data": []})
        created = self.clock.iso(job.updated_at)
        kinds = ["model"] if _is_full(job.body) else ["model", "adapter"]
        return web.json_response(
            {
                "data": [
                    {
                        "checkpoint_type": f"Final {kind}",
                        "checkpoint": kind,
                        "created_at": created,
                        "path": f"fake://{job.id}/{kind}",
                        "step": 0,
                    }
                    for kind in kinds
                ]
            }
        )
