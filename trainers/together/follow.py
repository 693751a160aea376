"""Following a fine-tune job to its end: poll its status and events, print what is new, stop when it is over."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from together import Together

from trainers.jobs import TERMINAL_STATUSES

from .client import sdk_errors


def job_dict(job: Any) -> dict[str, Any]:
    """A job response as the API sent it (API field names, e.g. ``model_output_name``)."""
    return job.to_dict(mode="json", warnings=False)


@dataclass(slots=True)
class JobView:
    """What is known of a job after one poll."""

    job_id: str
    status: str
    output_model: str | None
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def last_error(self) -> str | None:
        """The message of the last error-level event, if any (why a job failed)."""
        for event in reversed(self.events):
            if event.get("level") in ("error", "Error") or "error" in str(event.get("type", "")):
                return str(event.get("message", ""))
        return None


class JobFollower:
    """Polls one job every ``poll_interval`` seconds, printing status changes and new events to ``out``."""

    def __init__(
        self,
        client: Together,
        base_url: str,
        *,
        out: TextIO,
        quiet: bool = False,
        poll_interval: float = 10.0,
        sleep: Callable[[float], None],
        on_status: Callable[[JobView], None] | None = None,
    ) -> None:
        self.client = client
        self.base_url = base_url
        self.out = out
        self.quiet = quiet
        self.poll_interval = poll_interval
        self.sleep = sleep
        self.on_status = on_status
        self.seen_events = 0
        self.last_status: str | None = None

    def poll(self, job_id: str) -> JobView:
        """The job's current status, output model name and every event so far."""
        with sdk_errors(f"follow job {job_id}", self.base_url):
            job = job_dict(self.client.fine_tuning.retrieve(job_id))
            events = [
                e.to_dict(mode="json", warnings=False)
                for e in self.client.fine_tuning.list_events(job_id).data
            ]
        return JobView(job_id, str(job.get("status")), job.get("model_output_name"), events)

    def follow(self, job_id: str, *, resume: bool = False) -> JobView:
        """Poll until the job reaches a terminal status; returns its final view.

        ``resume`` continues a follow that was interrupted, without printing again what was already shown.
        """
        if not resume:
            self.seen_events, self.last_status = 0, None
        while True:
            view = self.poll(job_id)
            if view.status != self.last_status:
                self._say(f"job {job_id}: {view.status}")
                self.last_status = view.status
                if self.on_status is not None:
                    self.on_status(view)
            for event in view.events[self.seen_events :]:
                self._say(
                    f"  {event.get('created_at', '')}  {event.get('type', '')}: {event.get('message', '')}"
                )
            self.seen_events = len(view.events)
            if view.finished:
                return view
            self.sleep(self.poll_interval)

    def _say(self, line: str) -> None:
        if not self.quiet:
            print(line, file=self.out, flush=True)
