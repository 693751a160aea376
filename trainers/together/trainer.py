"""The Together back-end: check, upload, start the fine-tune, follow it, and name the model it made.

Idempotent: the uploads and jobs are recorded in :class:`~trainers.jobs.JobStore`. Running the same request again
(same API, base model, file bytes and options) re-attaches to the running job, or reports the completed one,
instead of paying for a second; a previous job that failed or was cancelled is replaced by a new one.

Ctrl-C while following asks whether to cancel the job (when stdin is a terminal); otherwise, or on "no", the job
is left running and the message says how to re-attach.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, TextIO

from together import Together

from distill.errors import CheckError, UsageError
from formats.masking import prompt_loss_warning
from trainers.base import TRAINERS, Trainer, TrainResult, TrainSpec
from trainers.jobs import JobRecord, JobStore, UploadRecord, file_sha256, request_key

from .client import NotOnService, make_client, sdk_errors
from .follow import JobFollower, JobView, job_dict
from .options import check_price, create_arguments, extra_options
from .terminal import Confirm, default_confirm, interrupts_held

PURPOSE = "fine-tune"
FILE_DONE = frozenset({"COMPLETED", "FAILED", "INVALID_FORMAT"})
TRAIN_ON_INPUTS: dict[str, bool | str] = {"true": True, "false": False, "auto": "auto"}


def run_file_check(path: Path) -> str | None:
    """``distill check`` on ``path`` before anything is uploaded; a broken rule is a :class:`CheckError`.
    Returns the file's data format."""
    from formats.check import check_file

    report = check_file(path)
    if not report.ok:
        raise CheckError(f"{path} breaks the fine-tuning data rules:\n{report.format()}")
    return report.data_format


def job_options(spec: TrainSpec) -> dict[str, Any]:
    """The options that shape a job, as recorded and hashed (the W&B key only by its variable's name)."""
    if spec.train_on_inputs not in TRAIN_ON_INPUTS:
        raise UsageError(
            f"--train-on-inputs {spec.train_on_inputs} is not supported by Together; use true, false or auto"
        )
    options: dict[str, Any] = {
        "n_epochs": spec.n_epochs,
        "n_checkpoints": spec.n_checkpoints,
        # A validation file is only used when evaluations are asked for: at least one then (as --backend local).
        "n_evals": max(int(spec.extra.get("n_evals", 0)), 1 if spec.validation_file else 0),
        "batch_size": spec.batch_size,
        "learning_rate": spec.learning_rate,
        "warmup_ratio": spec.warmup_ratio,
        "lora": spec.lora,
        "train_on_inputs": spec.train_on_inputs,
        "suffix": spec.suffix,
        "wandb_key_env": spec.wandb_key_env,
    }
    if spec.lora:
        options.update(lora_r=spec.lora_r, lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout)
    options.update(extra_options(spec))
    return options


def wandb_key(spec: TrainSpec) -> str | None:
    """The W&B key from the variable ``--wandb-key-env`` names; never stored or printed."""
    if not spec.wandb_key_env:
        return None
    key = os.environ.get(spec.wandb_key_env)
    if not key:
        raise UsageError(f"--wandb-key-env names {spec.wandb_key_env}, but that variable is not set or empty")
    return key


@TRAINERS.register("together")
class TogetherTrainer(Trainer):
    """Fine-tunes through the Together API with the ``together`` SDK (3.x).

    ``base_url`` None lets the SDK read ``TOGETHER_BASE_URL``; ``api_key`` None reads ``TOGETHER_API_KEY``.
    ``jobs_path`` is the job record (default: :func:`trainers.jobs.default_jobs_path`). Progress goes to ``out``
    (stderr) unless ``quiet``. ``confirm_cancel`` is asked on Ctrl-C (default: on a terminal only); ``sleep``
    waits between polls (a test may move a fake clock instead).
    """

    name: ClassVar[str] = "together"

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        jobs_path: Path | None = None,
        poll_interval: float = 10.0,
        quiet: bool = False,
        out: TextIO | None = None,
        confirm_cancel: Confirm | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_retries: int = 2,
    ) -> None:
        self._base_url = base_url
        self._api_key = api_key
        self.store = JobStore(jobs_path)
        self.poll_interval = poll_interval
        self.quiet = quiet
        self.out = out if out is not None else sys.stderr
        self.confirm_cancel = confirm_cancel if confirm_cancel is not None else default_confirm()
        self.sleep = sleep
        self.max_retries = max_retries
        self._client: Together | None = None

    @classmethod
    def from_cli(cls, args: Any) -> TogetherTrainer:
        """The trainer ``distill train`` flags describe."""
        return cls(
            base_url=args.base_url,
            jobs_path=args.jobs_db,
            poll_interval=args.poll_interval,
            quiet=args.quiet,
        )

    # plumbing

    @property
    def client(self) -> Together:
        if self._client is None:
            self._client = make_client(self._base_url, self._api_key, max_retries=self.max_retries)
        return self._client

    @property
    def base_url(self) -> str:
        """The API base actually used (after the SDK read ``TOGETHER_BASE_URL``), without a trailing slash."""
        return str(self.client.base_url).rstrip("/")

    def say(self, line: str) -> None:
        if not self.quiet:
            print(line, file=self.out, flush=True)

    def warn(self, line: str) -> None:
        """Shown even with ``quiet``: warnings."""
        print(line, file=self.out, flush=True)

    def _follower(self) -> JobFollower:
        base_url = self.base_url
        return JobFollower(
            self.client,
            base_url,
            out=self.out,
            quiet=self.quiet,
            poll_interval=self.poll_interval,
            sleep=self.sleep,
            on_status=lambda view: self.store.update_job(
                base_url, view.job_id, view.status, view.output_model
            ),
        )

    # the fine-tune

    def train(self, spec: TrainSpec) -> TrainResult:
        """Check, upload, start (or re-attach to) the job ``spec`` describes and follow it to its end."""
        options = job_options(spec)
        key_value = wandb_key(spec)
        data_format = run_file_check(spec.training_file)
        masking = prompt_loss_warning(data_format, spec.train_on_inputs)
        if masking is not None:
            self.warn(f"distill train: warning: {spec.training_file}: {masking}")
        if spec.validation_file is not None:
            run_file_check(spec.validation_file)
        training_sha = file_sha256(spec.training_file)
        validation_sha = file_sha256(spec.validation_file) if spec.validation_file is not None else None
        base_url = self.base_url
        identity = {
            "backend": self.name,
            "base_url": base_url,
            "model": spec.model,
            "training_sha256": training_sha,
            "validation_sha256": validation_sha,
            "options": options,
        }
        key = request_key(identity)
        previous = self._reusable_job(base_url, key)
        if previous is not None:
            return self._attach(*previous)
        training_id = self._upload(spec.training_file, training_sha)
        validation_id = self._upload(spec.validation_file, validation_sha) if spec.validation_file else ""
        check_price(self.client, base_url, spec, options, training_id, validation_id, self.say, self.warn)
        with interrupts_held() as held:  # a job created but not recorded would be paid for twice
            job = self._create(spec, options, training_id, validation_id, key_value)
            record = self._record(spec, options, job, key, training_sha, validation_sha)
        self.say(
            f"started job {record.job_id} (fine-tuning {spec.model}); the record is in {self.store.path}"
        )
        return self._follow_to_end(record.job_id, reattached=False, interrupted=held.caught)

    def _record(
        self,
        spec: TrainSpec,
        options: dict[str, Any],
        job: dict[str, Any],
        key: str,
        training_sha: str,
        validation_sha: str | None,
    ) -> JobRecord:
        record = JobRecord(
            job_id=job["id"],
            base_url=self.base_url,
            backend=self.name,
            request_key=key,
            model=spec.model,
            training_file=str(spec.training_file.resolve()),
            training_sha256=training_sha,
            options={**options, "validation_sha256": validation_sha},
            status=str(job.get("status", "pending")),
            output_model=job.get("model_output_name"),
            created_at=time.time(),
            updated_at=time.time(),
        )
        self.store.record_job(record)
        return record

    def _reusable_job(self, base_url: str, key: str) -> tuple[JobRecord, JobView] | None:
        """The recorded job for this request, when it is still running or has completed."""
        record = self.store.latest_job(base_url, key)
        if record is None:
            return None
        try:
            view = self._follower().poll(record.job_id)
        except NotOnService:
            self.say(f"recorded job {record.job_id} is unknown to {base_url}; starting a new one")
            return None
        self.store.update_job(base_url, record.job_id, view.status, view.output_model)
        if view.status in ("error", "user_error", "cancelled"):
            self.say(f"the previous job {record.job_id} ended {view.status}; starting a new one")
            return None
        return record, view

    def _attach(self, record: JobRecord, view: JobView) -> TrainResult:
        if view.finished:
            self.say(f"this fine-tune already ran as job {record.job_id} (no new upload or job)")
            return self._result(view, reattached=True)
        self.say(
            f"this fine-tune is already running as job {record.job_id}: re-attaching (no new upload or job)"
        )
        return self._follow_to_end(record.job_id, reattached=True)

    def _upload(self, path: Path, sha256: str) -> str:
        """The file id of ``path`` on the service: the recorded one if still there, else a fresh upload."""
        base_url = self.base_url
        recorded = self.store.find_upload(base_url, sha256, PURPOSE)
        if recorded is not None:
            try:
                with sdk_errors(f"look up file {recorded.file_id}", base_url):
                    found = self.client.files.retrieve(recorded.file_id)
            except NotOnService:
                found = None
            if found is not None and found.processing_status == "COMPLETED":
                self.say(f"{path} is already uploaded as {recorded.file_id}")
                return recorded.file_id
            self.store.forget_upload(base_url, sha256, PURPOSE)
        self.say(f"uploading {path} ...")
        with sdk_errors(f"upload {path}", base_url):
            uploaded = self.client.files.upload(path, purpose=PURPOSE, check=True)
        checked = self._wait_until_checked(uploaded.id, path)
        self.store.record_upload(
            UploadRecord(
                base_url, sha256, PURPOSE, checked.id, path.name, checked.bytes, "COMPLETED", time.time()
            )
        )
        self.say(f"uploaded {path} as {checked.id} ({checked.bytes} bytes)")
        return checked.id

    def _wait_until_checked(self, file_id: str, path: Path) -> Any:
        """Wait for the service's own check of an upload; a file it rejects is a :class:`CheckError`."""
        while True:
            with sdk_errors(f"look up file {file_id}", self.base_url):
                found = self.client.files.retrieve(file_id)
            status = found.processing_status
            if status is None or status == "COMPLETED":
                return found
            if status in FILE_DONE:
                report = found.validation_report
                reason = (
                    report.error if report is not None and report.error else f"processing status {status}"
                )
                raise CheckError(
                    f"Together rejected {path} (file {file_id}): {reason}; fix the file (distill check {path}) "
                    "and run the same command again"
                )
            self.sleep(self.poll_interval)

    def _create(
        self,
        spec: TrainSpec,
        options: dict[str, Any],
        training_id: str,
        validation_id: str,
        wandb: str | None,
    ) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "training_file": training_id,
            "model": spec.model,
            "validation_file": validation_id,
            "n_epochs": options["n_epochs"],
            "n_checkpoints": options["n_checkpoints"],
            "n_evals": options["n_evals"],
            "batch_size": options["batch_size"],
            "learning_rate": options["learning_rate"],
            "warmup_ratio": options["warmup_ratio"],
            "lora": spec.lora,
            "train_on_inputs": TRAIN_ON_INPUTS[spec.train_on_inputs],
            "suffix": spec.suffix,
            "wandb_api_key": wandb,
        }
        if spec.lora:
            arguments.update(lora_r=spec.lora_r, lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout)
        arguments.update(create_arguments(spec, options))
        try:
            with sdk_errors(f"start a fine-tune of {spec.model}", self.base_url):
                return job_dict(self.client.fine_tuning.create(**arguments))
        except ValueError as e:  # the SDK checks the options against the model's limits before sending
            raise UsageError(f"Together does not accept these options for {spec.model}: {e}") from None

    def _follow_to_end(self, job_id: str, *, reattached: bool, interrupted: bool = False) -> TrainResult:
        follower = self._follower()
        resume = False
        while True:
            try:
                if interrupted:  # Ctrl-C came while the job was being created and recorded
                    interrupted = False
                    raise KeyboardInterrupt
                view = follower.follow(job_id, resume=resume)
                break
            except KeyboardInterrupt:
                if not self._cancel_on_interrupt(job_id):
                    self.say(
                        f"job {job_id} is still running on Together; run the same distill train command again "
                        "to re-attach (distill train --status lists recorded jobs)"
                    )
                    raise
                resume = True
        return self._result(view, reattached)

    def _cancel_on_interrupt(self, job_id: str) -> bool:
        """Ask whether to cancel; cancel when told to. False: leave the job running."""
        if self.confirm_cancel is None or not self.confirm_cancel(f"cancel fine-tune job {job_id}?"):
            return False
        self.cancel(job_id)
        return True

    def cancel(self, job_id: str) -> str:
        """Ask the service to cancel ``job_id``; returns the status it reports."""
        with sdk_errors(f"cancel job {job_id}", self.base_url):
            status = str(job_dict(self.client.fine_tuning.cancel(job_id)).get("status"))
        self.store.update_job(self.base_url, job_id, status, None)
        self.say(f"asked Together to cancel job {job_id} ({status})")
        return status

    def refresh(self, record: JobRecord) -> JobRecord:
        """``record`` with the status the service reports now (and the record updated)."""
        view = self._follower().poll(record.job_id)
        self.store.update_job(record.base_url, record.job_id, view.status, view.output_model)
        return replace(record, status=view.status, output_model=view.output_model or record.output_model)

    def _result(self, view: JobView, reattached: bool) -> TrainResult:
        details: dict[str, Any] = {
            "base_url": self.base_url,
            "reattached": reattached,
            "events": len(view.events),
        }
        if view.status == "completed":
            self.say(f"job {view.job_id} completed: fine-tuned model {view.output_model}")
            return TrainResult(view.job_id, view.status, view.output_model, details)
        details["error"] = view.last_error
        return TrainResult(view.job_id, view.status, None, details)
