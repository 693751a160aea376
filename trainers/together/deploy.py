"""Dedicated endpoints at Together: deploy a model, wait until it serves, stop it, delete it, clean up after crashes.

Through the ``together`` 3.x SDK: an *endpoint* (``client.endpoints``) is the name inference requests use
(``<project>/<name>``); a *deployment* under it (``client.endpoints.deployments``) runs the model on the chosen
hardware with ``min_replicas``..``max_replicas`` replicas. Stopping sets both to 0; deleting removes the
deployment, then the endpoint. Every endpoint is recorded in the jobs database (:mod:`trainers.endpoint_records`)
before it is created, so one left running by a crash is found and deleted later (:meth:`Deployer.cleanup`).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from together import Together

from distill.errors import TrainerError, UsageError
from trainers.endpoint_records import EndpointRecord, EndpointStore

from .client import NotOnService, make_client, sdk_errors
from .hardware import Deployable, HardwareOption, deployable

PROJECT_ENV = "TOGETHER_PROJECT_ID"
HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)
READY = "DEPLOYMENT_STATE_READY"
STOPPED = "DEPLOYMENT_STATE_STOPPED"
FAILED = "DEPLOYMENT_STATE_FAILED"


@dataclass(frozen=True, slots=True)
class DeployRequest:
    """What to deploy and how. ``name`` None: ``distill-<model>-<random>``."""

    model: str
    hardware: str | None = None
    min_replicas: int = 1
    max_replicas: int = 1
    inactive_timeout: int | None = None
    name: str | None = None

    def check(self) -> None:
        if self.min_replicas < 1:
            raise UsageError(f"--min-replicas must be at least 1, got {self.min_replicas}")
        if self.max_replicas < self.min_replicas:
            raise UsageError(
                f"--max-replicas ({self.max_replicas}) must be at least --min-replicas ({self.min_replicas})"
            )
        timeout = self.inactive_timeout
        if timeout not in (None, 0) and not 30 <= timeout <= 1440:  # type: ignore[operator]
            raise UsageError(f"--inactive-timeout takes 0 (never) or 30 to 1440 minutes, got {timeout}")


@contextmanager
def signals_held() -> Iterator[list[int]]:
    """Hold SIGINT and SIGTERM until the block is over (a tear-down must not be cut short); yields the signals
    that came."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    previous = {sig: signal.getsignal(sig) for sig in HELD_SIGNALS}
    for sig in HELD_SIGNALS:
        signal.signal(sig, lambda signum, frame: caught.append(signum))
    try:
        yield caught
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def eval_endpoint_name(model: str) -> str:
    """The same name for every evaluation of ``model``, so a rerun asks the same model name (and its cache)."""
    return endpoint_name(model, "eval-" + hashlib.sha256(model.encode()).hexdigest()[:6])


def endpoint_name(model: str, suffix: str | None = None) -> str:
    """A valid endpoint name for ``model``: ``distill-<last part of the name>-<suffix>``, at most 63 characters."""
    stem = "".join(c if c.isalnum() else "-" for c in model.rsplit("/", 1)[-1].lower()).strip("-")
    tail = suffix or secrets.token_hex(3)
    return f"distill-{stem[: 63 - len('distill--') - len(tail)]}-{tail}"


class Deployer:
    """Creates and tears down dedicated endpoints, recording each in the jobs database.

    ``owner``/``owner_pid``: who tears the endpoint down (``eval`` with this process's pid), or nobody but the
    user (``deploy``, no pid). ``sleep`` and ``now`` are injectable for tests.
    """

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        project_id: str | None = None,
        jobs_path: Path | None = None,
        poll_interval: float = 10.0,
        ready_timeout: float = 3600.0,
        out: TextIO | None = None,
        quiet: bool = False,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], float] = time.time,
        max_retries: int = 2,
    ) -> None:
        self._base_url = base_url
        self._api_key = api_key
        self.project_id = project_id or os.environ.get(PROJECT_ENV)
        self.store = EndpointStore(jobs_path)
        self.poll_interval = poll_interval
        self.ready_timeout = ready_timeout
        self.out = out if out is not None else sys.stderr
        self.quiet = quiet
        self.sleep = sleep
        self.now = now
        self.max_retries = max_retries
        self._client: Together | None = None

    @property
    def client(self) -> Together:
        if self._client is None:
            if not self.project_id:
                raise UsageError(
                    f"no Together project: pass --project ID or set {PROJECT_ENV} (endpoints belong to a project; "
                    "its id is on https://api.together.ai/settings)"
                )
            client = make_client(self._base_url, self._api_key, max_retries=self.max_retries)
            self._client = (
                client.with_options(project_id=self.project_id) if client.project_id is None else client
            )
        return self._client

    @property
    def base_url(self) -> str:
        return str(self.client.base_url).rstrip("/")

    @property
    def inference_url(self) -> str:
        """The OpenAI-style base to send chat requests for an endpoint to."""
        return f"{self.base_url}/v1"

    def say(self, line: str) -> None:
        if not self.quiet:
            print(line, file=self.out, flush=True)

    # hardware

    def hardware(self, model: str) -> Deployable:
        return deployable(self.client, model, self.base_url)

    # deploying

    def deploy(
        self, request: DeployRequest, *, owner: str = "deploy", owner_pid: int | None = None
    ) -> EndpointRecord:
        """Create the endpoint and its deployment, wait until it serves; the record of the running endpoint."""
        request.check()
        target = self.hardware(request.model)
        option = target.pick(request.hardware)
        name = request.name or endpoint_name(request.model)
        self.say(f"deploying {request.model} as endpoint {name} on {option.label} ({option.price})")
        record_id = self.store.add(
            base_url=self.base_url,
            project_id=self.project_id or "",
            name=name,
            model=request.model,
            hardware=option.hardware,
            price_cents_per_hour=option.price_cents_per_hour or 0,
            replicas=request.max_replicas,
            owner=owner,
            owner_pid=owner_pid,
            created_at=self.now(),
        )
        try:
            self._create(record_id, name, target, option, request)
            return self.wait_until_ready(self.store.get(record_id))
        except BaseException:
            self.say(f"deploying {name} did not finish: tearing it down")
            with signals_held():
                self.teardown(self.store.get(record_id))
            raise

    def _create(
        self, record_id: int, name: str, target: Deployable, option: HardwareOption, request: DeployRequest
    ) -> None:
        endpoints, base_url = self.client.endpoints, self.base_url
        with sdk_errors(f"create endpoint {name}", base_url):
            endpoint = endpoints.create(name=name)
        self.store.update(record_id, endpoint_id=endpoint.id, inference_name=endpoint.name)
        autoscaling = {"min_replicas": request.min_replicas, "max_replicas": request.max_replicas}
        extra = {"inactive_timeout": request.inactive_timeout} if request.inactive_timeout is not None else {}
        with sdk_errors(f"deploy {request.model} on endpoint {name}", base_url):
            deployment = endpoints.deployments.create(
                endpoint.id,
                name="main",
                model=target.resource,
                config=option.config,
                autoscaling=autoscaling,  # type: ignore[arg-type]
                **extra,  # type: ignore[arg-type]
            )
        self.store.update(record_id, deployment_id=deployment.id)
        with sdk_errors(f"route endpoint {name} to its deployment", base_url):
            endpoints.update(
                endpoint.id,
                traffic_split=[{"deployment_id": deployment.id, "weight": 1.0}],
                update_mask="trafficSplit",
            )

    def state(self, record: EndpointRecord) -> str:
        """The deployment's state as Together reports it (``DEPLOYMENT_STATE_READY``...), or ``GONE``."""
        if record.endpoint_id is None or record.deployment_id is None:
            return "GONE" if record.endpoint_id is None else "NO_DEPLOYMENT"
        try:
            with sdk_errors(f"look up endpoint {record.name}", self.base_url):
                found = self.client.endpoints.deployments.retrieve(
                    record.deployment_id, endpoint_id=record.endpoint_id
                )
        except NotOnService:
            return "GONE"
        return str(found.status.state)

    def wait_until_ready(self, record: EndpointRecord) -> EndpointRecord:
        """Poll until the deployment serves; a failed one or one past ``ready_timeout`` is a TrainerError."""
        started = self.now()
        last = None
        while True:
            state = self.state(record)
            if state != last:
                self.say(f"endpoint {record.name}: {state.removeprefix('DEPLOYMENT_STATE_').lower()}")
                last = state
            if state == READY:
                self.store.update(record.id, ready_at=self.now())
                self.say(f"endpoint {record.inference_name} is serving")
                return self.store.get(record.id)
            if state in (FAILED, STOPPED, "GONE"):
                raise TrainerError(
                    f"endpoint {record.name} did not start ({state}); see the Together console"
                )
            if self.now() - started > self.ready_timeout:
                raise TrainerError(
                    f"endpoint {record.name} was not serving after {self.ready_timeout:.0f} s; it was torn down"
                )
            self.sleep(self.poll_interval)

    # stopping and deleting

    def stop(self, record: EndpointRecord) -> None:
        """Scale the deployment to zero replicas (it stops billing once stopped)."""
        if record.endpoint_id and record.deployment_id and record.stopped_at is None:
            try:
                with sdk_errors(f"stop endpoint {record.name}", self.base_url):
                    self.client.endpoints.deployments.update(
                        record.deployment_id,
                        endpoint_id=record.endpoint_id,
                        autoscaling={"min_replicas": 0, "max_replicas": 0},
                    )
            except NotOnService:
                pass
        if record.stopped_at is None:
            self.store.update(record.id, stopped_at=self.now())

    def delete(self, record: EndpointRecord) -> None:
        """Delete the deployment, then the endpoint; what is already gone is fine."""
        endpoints = self.client.endpoints
        if record.endpoint_id is None:
            record = self._adopt(record)
        if record.endpoint_id is not None:
            try:
                with sdk_errors(f"delete endpoint {record.name}", self.base_url):
                    for deployment in endpoints.deployments.list(record.endpoint_id):
                        endpoints.deployments.delete(deployment.id, endpoint_id=record.endpoint_id)
                    endpoints.delete(record.endpoint_id)
            except NotOnService:
                pass
        self.store.update(record.id, deleted_at=self.now(), stopped_at=record.stopped_at or self.now())

    def _adopt(self, record: EndpointRecord) -> EndpointRecord:
        """A record written just before a crash may lack the endpoint's id: find it by name."""
        with sdk_errors("list endpoints", self.base_url):
            for endpoint in self.client.endpoints.list():
                if endpoint.name.rsplit("/", 1)[-1] == record.name:
                    self.store.update(record.id, endpoint_id=endpoint.id, inference_name=endpoint.name)
                    return self.store.get(record.id)
        return record

    def teardown(self, record: EndpointRecord) -> EndpointRecord:
        """Stop and delete; the final record (with its minutes and cost)."""
        self.stop(record)
        self.delete(self.store.get(record.id))
        final = self.store.get(record.id)
        self.say(f"endpoint {record.name} stopped and deleted: {final.usage(self.now())}")
        return final

    def cleanup(self, *, orphans_only: bool) -> list[EndpointRecord]:
        """Tear down what crashed processes left (``orphans_only``) or every endpoint recorded as alive."""
        records = self.store.orphans() if orphans_only else self.store.records(alive_only=True)
        mine = [r for r in records if r.base_url == self.base_url and r.project_id == self.project_id]
        for record in mine:
            self.say(f"endpoint {record.name} was left running by {record.owner} (pid {record.owner_pid})")
            self.teardown(record)
        return [self.store.get(r.id) for r in mine]
