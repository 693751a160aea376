"""The fake's dedicated-endpoint state: models, configs, hardware, endpoints, deployments, and their bill.

It follows the v2 API the ``together`` 3.x SDK speaks (``client.endpoints``, ``client.endpoints.deployments``,
``client.endpoints.hardware``, ``client.models``, ``client.models.configs``). An endpoint is an addressable name
(``<project>/<name>``, the ``model`` of an inference request); a deployment under it binds a model and a config
(the hardware) and runs replicas. A deployment's life, moved by the clock like a fine-tune job::

    PROVISIONING --(seconds_to_ready)--> READY --(min=max=0 replicas)--> STOPPING --(seconds_to_stop)--> STOPPED

A READY deployment with an inactive timeout stops by itself that many minutes after its last request. Every
replica is billed by the started minute from its creation (or restart) until it is stopped or deleted:
:meth:`EndpointState.billed_minutes` is that counter.

Models: a fine-tuned model is the output of a completed job (its base is ``projects/together/models/<id>``);
base models are public. Base models whose name ends in ``-Reference`` are fine-tuning weights only: asking for
their configs answers 404, as Together answers for their hardware.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from dataclasses import dataclass, field
from typing import Any

from .clock import Clock

PUBLIC_PROJECT = "together"
NOT_DEPLOYABLE_MARKER = "-Reference"

# The fake's catalog: names as the service spells them; prices are made up, of the right order.
CATALOG: tuple[tuple[str, str, int, int], ...] = (
    ("nvidia-h100-80gb", "H100", 1, 336),
    ("nvidia-h100-80gb", "H100", 2, 672),
    ("nvidia-a100-80gb", "A100", 1, 256),
)


class ApiError(Exception):
    """An error answer: HTTP ``status`` and its message."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


def short_id(prefix: str, text: str) -> str:
    return f"{prefix}_{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def public_model_id(name: str) -> str:
    return short_id("mdl", name)


def hardware_name(gpu_type: str, count: int) -> str:
    return f"{count}x{gpu_type}"


@dataclass(slots=True)
class Interval:
    """Replicas running from ``start`` until ``end`` (None: still running)."""

    start: float
    replicas: int
    end: float | None = None


@dataclass(slots=True)
class FakeDeployment:
    id: str
    endpoint_id: str
    name: str
    model: str
    config_id: str
    hardware: str
    min_replicas: int
    max_replicas: int
    inactive_timeout: int | None
    created_at: float
    updated_at: float
    state: str = "DEPLOYMENT_STATE_PROVISIONING"
    state_until: float | None = None
    last_request: float = 0.0
    bill: list[Interval] = field(default_factory=list)
    etag: str = field(default_factory=lambda: secrets.token_hex(6))

    def running_interval(self) -> Interval | None:
        return self.bill[-1] if self.bill and self.bill[-1].end is None else None


@dataclass(slots=True)
class FakeEndpoint:
    id: str
    name: str
    project_id: str
    visibility: str
    created_at: float
    updated_at: float
    traffic_split: list[dict[str, Any]] = field(default_factory=list)
    etag: str = field(default_factory=lambda: secrets.token_hex(6))


class EndpointState:
    """Endpoints and deployments, advanced lazily on the clock; ``seconds_to_ready`` and ``seconds_to_stop`` are
    how long provisioning and stopping take."""

    def __init__(self, clock: Clock, *, seconds_to_ready: float, seconds_to_stop: float) -> None:
        self.clock = clock
        self.seconds_to_ready = seconds_to_ready
        self.seconds_to_stop = seconds_to_stop
        self.endpoints: dict[str, FakeEndpoint] = {}
        self.deployments: dict[str, FakeDeployment] = {}
        self.closed_bills: list[Interval] = []
        self.configs: dict[str, tuple[str, str]] = {}  # config id -> (reference model, hardware name)

    # configs and hardware

    def configs_for(self, reference: str) -> list[dict[str, Any]]:
        """The configs that run models of ``reference`` (``projects/P/models/ID`` or a public model name)."""
        if reference.startswith("projects/"):
            reference_model, reference_id = reference, reference.rsplit("/", 1)[-1]
        else:
            if NOT_DEPLOYABLE_MARKER in reference:
                raise ApiError(
                    404,
                    f"model {reference} has no hardware available: it is fine-tuning reference weights, "
                    "not a model that can be deployed",
                    "referenceModelId",
                )
            reference_id = public_model_id(reference)
            reference_model = f"projects/{PUBLIC_PROJECT}/models/{reference_id}"
        configs = [
            {
                "id": short_id("cr", f"{reference_id}:{hardware_name(gpu, count)}"),
                "certifications": [],
                "projectId": PUBLIC_PROJECT,
                "referenceModel": reference_model,
                "referenceModelId": reference_id,
                "selectors": [
                    {"key": "accelerator_type", "value": gpu},
                    {"key": "accelerator_count", "value": str(count)},
                ],
            }
            for gpu, _, count, _ in CATALOG
        ]
        for config in configs:
            selectors = {s["key"]: s["value"] for s in config["selectors"]}
            hardware = hardware_name(selectors["accelerator_type"], int(selectors["accelerator_count"]))
            self.configs[config["id"]] = (reference_model, hardware)
        return configs

    @staticmethod
    def catalog() -> list[dict[str, Any]]:
        return [
            {
                "id": short_id("it", hardware_name(gpu, count)),
                "name": hardware_name(gpu, count),
                "description": f"{count}x {label} 80GB",
                "gpuCount": count,
                "gpuMemoryGib": 80,
                "gpuType": label,
                "priceCentsPerHour": cents,
                "regions": [{"name": "us-central-1", "headroom": {"relation": "RELATION_GTE", "value": 8}}],
            }
            for gpu, label, count, cents in CATALOG
        ]

    # the life cycle

    def advance(self, deployment: FakeDeployment) -> None:
        """Apply what the clock says happened since the last look."""
        now = self.clock.now()
        if deployment.state_until is not None and now >= deployment.state_until:
            at = deployment.state_until
            deployment.state_until = None
            if deployment.state == "DEPLOYMENT_STATE_PROVISIONING":
                deployment.state = "DEPLOYMENT_STATE_READY"
                deployment.last_request = at
            elif deployment.state == "DEPLOYMENT_STATE_STOPPING":
                self._stopped(deployment, at)
        timeout = deployment.inactive_timeout
        if deployment.state == "DEPLOYMENT_STATE_READY" and timeout:
            idle_until = deployment.last_request + timeout * 60
            if now >= idle_until:
                self._stopped(deployment, idle_until)

    def _stopped(self, deployment: FakeDeployment, at: float) -> None:
        deployment.state = "DEPLOYMENT_STATE_STOPPED"
        deployment.min_replicas = deployment.max_replicas = 0
        deployment.updated_at = at
        running = deployment.running_interval()
        if running is not None:
            running.end = at

    def start(self, deployment: FakeDeployment, replicas: int) -> None:
        now = self.clock.now()
        deployment.state = "DEPLOYMENT_STATE_PROVISIONING"
        deployment.state_until = now + self.seconds_to_ready
        deployment.bill.append(Interval(now, replicas))

    def stop(self, deployment: FakeDeployment) -> None:
        if deployment.state in ("DEPLOYMENT_STATE_STOPPED", "DEPLOYMENT_STATE_STOPPING"):
            return
        deployment.state = "DEPLOYMENT_STATE_STOPPING"
        deployment.state_until = self.clock.now() + self.seconds_to_stop

    def delete(self, deployment: FakeDeployment) -> None:
        running = deployment.running_interval()
        if running is not None:
            running.end = self.clock.now()
        self.closed_bills += deployment.bill
        del self.deployments[deployment.id]

    # the bill

    def billed_minutes(self) -> int:
        """Replica-minutes billed so far (each started minute of each replica counts), deleted ones included."""
        now = self.clock.now()
        intervals = [*self.closed_bills, *(i for d in self.deployments.values() for i in d.bill)]
        return sum(
            math.ceil(max(0.0, (i.end if i.end is not None else now) - i.start) / 60) * i.replicas
            for i in intervals
        )

    def running(self) -> list[FakeDeployment]:
        """Deployments that are not stopped (they cost money)."""
        for deployment in list(self.deployments.values()):
            self.advance(deployment)
        return [d for d in self.deployments.values() if d.state != "DEPLOYMENT_STATE_STOPPED"]
