"""The fake's HTTP routes for dedicated endpoints (v2, as the ``together`` 3.x SDK calls them) and for inference on
them (``POST /v1/chat/completions`` with ``model`` = an endpoint's name). State lives in :mod:`.endpoints`.

:func:`register` adds the routes to the fake's application; the fake calls it from ``FakeTogether.app``.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any, Protocol

from aiohttp import web

from distill.servers.teacher.answers import chat_answer

from .clock import Clock
from .endpoints import (
    PUBLIC_PROJECT,
    ApiError,
    EndpointState,
    FakeDeployment,
    FakeEndpoint,
    public_model_id,
    short_id,
)
from .store import FakeJob


class FakeService(Protocol):
    """What the routes need of the fake (``FakeTogether``): its clock, jobs, endpoint state and latency knob."""

    clock: Clock
    jobs: dict[str, FakeJob]
    endpoint_state: EndpointState
    inference_seconds: float


PROJECT = "/v2/projects/{project}"
ENDPOINT = PROJECT + "/endpoints/{endpoint}"
DEPLOYMENT = ENDPOINT + "/deployments/{deployment}"


def _error(e: ApiError) -> web.Response:
    kind = {404: "not_found", 409: "conflict", 503: "service_unavailable"}.get(
        e.status, "invalid_request_error"
    )
    body = {"error": {"message": str(e), "type": kind, "param": e.param, "code": None}}
    return web.json_response(body, status=e.status)


def _page(items: list[dict[str, Any]]) -> web.Response:
    return web.json_response({"object": "list", "data": items, "next_cursor": None})


class EndpointRoutes:
    """The handlers, over the fake's :class:`EndpointState` and its completed fine-tune jobs (the models)."""

    def __init__(self, fake: FakeService) -> None:
        self.fake = fake
        self.state: EndpointState = fake.endpoint_state

    def iso(self, at: float) -> str:
        return self.fake.clock.iso(at)

    # models and configs

    def custom_models(self, project: str) -> list[dict[str, Any]]:
        """Every completed job's output model, as a model resource of ``project``."""
        models = []
        now = self.fake.clock.now()
        for job in self.fake.jobs.values():
            job.advance(now, self.fake.clock)
            if job.status != "completed":
                continue
            models.append(
                {
                    "id": short_id("mdl", job.output_name),
                    "name": job.output_name,
                    "organizationId": "org_fake",
                    "projectId": project,
                    "visibility": "VISIBILITY_PRIVATE",
                    "weights": {"type": "WEIGHTS_TYPE_DEFAULT"},
                    "baseModel": f"projects/{PUBLIC_PROJECT}/models/{public_model_id(job.body['model'])}",
                }
            )
        return models

    async def list_models(self, request: web.Request) -> web.Response:
        return _page(self.custom_models(request.match_info["project"]))

    async def list_configs(self, request: web.Request) -> web.Response:
        reference = request.query.get("referenceModel") or request.query.get("referenceModelId")
        if not reference:
            return _error(ApiError(400, "referenceModel or referenceModelId is required", "referenceModel"))
        try:
            return _page(self.state.configs_for(reference))
        except ApiError as e:
            return _error(e)

    async def hardware(self, request: web.Request) -> web.Response:
        return _page(self.state.catalog())

    # endpoints

    def _endpoint(self, request: web.Request) -> FakeEndpoint:
        endpoint = self.state.endpoints.get(request.match_info["endpoint"])
        if endpoint is None or endpoint.project_id != request.match_info["project"]:
            raise ApiError(404, f"endpoint {request.match_info['endpoint']} not found")
        return endpoint

    def endpoint_json(self, endpoint: FakeEndpoint) -> dict[str, Any]:
        deployments = [d for d in self.state.deployments.values() if d.endpoint_id == endpoint.id]
        for d in deployments:
            self.state.advance(d)
        return {
            "id": endpoint.id,
            "createdAt": self.iso(endpoint.created_at),
            "updatedAt": self.iso(endpoint.updated_at),
            "deployments": [self.summary_json(endpoint, d) for d in deployments],
            "endpointType": "ENDPOINT_TYPE_DEDICATED",
            "etag": endpoint.etag,
            "name": f"{endpoint.project_id}/{endpoint.name}",
            "projectId": endpoint.project_id,
            "trafficSplit": endpoint.traffic_split,
            "visibility": endpoint.visibility,
        }

    def summary_json(self, endpoint: FakeEndpoint, d: FakeDeployment) -> dict[str, Any]:
        return {
            "id": d.id,
            "autoscaling": {"minReplicas": d.min_replicas, "maxReplicas": d.max_replicas},
            "createdAt": self.iso(d.created_at),
            "estimatedEffectiveTrafficShare": 1.0 if d.state == "DEPLOYMENT_STATE_READY" else 0.0,
            "model": d.model,
            "modelId": d.model.rsplit("/", 1)[-1],
            "name": f"{endpoint.project_id}/{endpoint.name}/{d.name}",
            "state": d.state,
            "trafficMode": "TRAFFIC_MODE_LIVE",
            "hardware": d.hardware,
            "readyReplicas": d.min_replicas if d.state == "DEPLOYMENT_STATE_READY" else 0,
        }

    async def create_endpoint(self, request: web.Request) -> web.Response:
        project = request.match_info["project"]
        body = await request.json()
        name = str(body.get("name") or "").removeprefix(f"{project}/")
        if not name or "/" in name:
            return _error(ApiError(400, "name is required (a bare endpoint name)", "name"))
        if any(e.name == name and e.project_id == project for e in self.state.endpoints.values()):
            return _error(ApiError(409, f"an endpoint named {name} already exists", "name"))
        now = self.fake.clock.now()
        endpoint = FakeEndpoint(
            id=f"ep_{secrets.token_hex(8)}",
            name=name,
            project_id=project,
            visibility=body.get("visibility") or "VISIBILITY_PRIVATE",
            created_at=now,
            updated_at=now,
        )
        self.state.endpoints[endpoint.id] = endpoint
        return web.json_response(self.endpoint_json(endpoint))

    async def list_endpoints(self, request: web.Request) -> web.Response:
        project = request.match_info["project"]
        return _page(
            [self.endpoint_json(e) for e in self.state.endpoints.values() if e.project_id == project]
        )

    async def retrieve_endpoint(self, request: web.Request) -> web.Response:
        return web.json_response(self.endpoint_json(self._endpoint(request)))

    async def update_endpoint(self, request: web.Request) -> web.Response:
        endpoint = self._endpoint(request)
        body = await request.json()
        if "trafficSplit" in body:
            known = {d.id for d in self.state.deployments.values() if d.endpoint_id == endpoint.id}
            for entry in body["trafficSplit"]:
                if entry.get("deploymentId") not in known:
                    raise ApiError(400, f"trafficSplit names unknown deployment {entry.get('deploymentId')}")
            endpoint.traffic_split = list(body["trafficSplit"])
        if body.get("visibility"):
            endpoint.visibility = body["visibility"]
        endpoint.updated_at = self.fake.clock.now()
        endpoint.etag = secrets.token_hex(6)
        return web.json_response(self.endpoint_json(endpoint))

    async def delete_endpoint(self, request: web.Request) -> web.Response:
        endpoint = self._endpoint(request)
        if any(d.endpoint_id == endpoint.id for d in self.state.deployments.values()):
            raise ApiError(400, f"endpoint {endpoint.id} still has deployments: delete them first")
        del self.state.endpoints[endpoint.id]
        return web.json_response({})

    # deployments

    def _deployment(self, request: web.Request) -> tuple[FakeEndpoint, FakeDeployment]:
        endpoint = self._endpoint(request)
        deployment = self.state.deployments.get(request.match_info["deployment"])
        if deployment is None or deployment.endpoint_id != endpoint.id:
            raise ApiError(404, f"deployment {request.match_info['deployment']} not found")
        self.state.advance(deployment)
        return endpoint, deployment

    def deployment_json(self, endpoint: FakeEndpoint, d: FakeDeployment) -> dict[str, Any]:
        ready = d.state == "DEPLOYMENT_STATE_READY"
        return {
            **self.summary_json(endpoint, d),
            "config": f"projects/{PUBLIC_PROJECT}/configs/{d.config_id}",
            "configId": d.config_id,
            "endpointId": endpoint.id,
            "etag": d.etag,
            "modelRevisionId": "rev_1",
            "projectId": endpoint.project_id,
            "status": {
                "state": d.state,
                "message": d.state.removeprefix("DEPLOYMENT_STATE_").lower(),
                "readyReplicas": d.min_replicas if ready else 0,
                "scheduledReplicas": d.min_replicas,
            },
            "updatedAt": self.iso(d.updated_at),
            "inactiveTimeout": d.inactive_timeout,
            "desiredReplicas": d.min_replicas,
        }

    def _check_model(self, project: str, model: str, config_id: str) -> str:
        """The hardware of ``config_id`` when it can run ``model``; an :class:`ApiError` otherwise."""
        if config_id not in self.state.configs:
            raise ApiError(400, f"config {config_id} not found", "config")
        reference, hardware = self.state.configs[config_id]
        custom = {f"projects/{project}/models/{m['id']}": m for m in self.custom_models(project)}
        if model in custom:
            base = custom[model]["baseModel"]
        elif model.startswith(f"projects/{PUBLIC_PROJECT}/models/"):
            base = model
        else:
            raise ApiError(400, f"model {model} not found", "model")
        if base != reference:
            raise ApiError(400, f"config {config_id} is not compatible with model {model}", "config")
        return hardware

    async def create_deployment(self, request: web.Request) -> web.Response:
        endpoint = self._endpoint(request)
        body = await request.json()
        scaling = body.get("autoscaling") or {}
        low = int(scaling.get("minReplicas", 1))
        high = int(scaling.get("maxReplicas", low))
        timeout = body.get("inactiveTimeout")
        if not body.get("name"):
            raise ApiError(400, "name is required", "name")
        if low < 0 or high < low:
            raise ApiError(400, "autoscaling needs 0 <= minReplicas <= maxReplicas", "autoscaling")
        if timeout not in (None, 0) and not 30 <= int(timeout) <= 1440:
            raise ApiError(400, "inactiveTimeout must be 0 or 30 to 1440 minutes", "inactiveTimeout")
        config_id = str(body.get("config") or "").rsplit("/", 1)[-1]
        hardware = self._check_model(endpoint.project_id, str(body.get("model") or ""), config_id)
        now = self.fake.clock.now()
        deployment = FakeDeployment(
            id=f"dep_{secrets.token_hex(8)}",
            endpoint_id=endpoint.id,
            name=str(body["name"]),
            model=str(body["model"]),
            config_id=config_id,
            hardware=hardware,
            min_replicas=low,
            max_replicas=high,
            inactive_timeout=int(timeout) if timeout else None,
            created_at=now,
            updated_at=now,
        )
        self.state.deployments[deployment.id] = deployment
        if low > 0:
            self.state.start(deployment, low)
        else:
            deployment.state = "DEPLOYMENT_STATE_STOPPED"
        return web.json_response(self.deployment_json(endpoint, deployment))

    async def list_deployments(self, request: web.Request) -> web.Response:
        endpoint = self._endpoint(request)
        found = [d for d in self.state.deployments.values() if d.endpoint_id == endpoint.id]
        for d in found:
            self.state.advance(d)
        return _page([self.deployment_json(endpoint, d) for d in found])

    async def retrieve_deployment(self, request: web.Request) -> web.Response:
        return web.json_response(self.deployment_json(*self._deployment(request)))

    async def update_deployment(self, request: web.Request) -> web.Response:
        endpoint, deployment = self._deployment(request)
        body = await request.json()
        scaling = body.get("autoscaling")
        if "inactiveTimeout" in body:
            deployment.inactive_timeout = int(body["inactiveTimeout"]) or None
        if scaling is not None:
            low = int(scaling.get("minReplicas", deployment.min_replicas))
            high = int(scaling.get("maxReplicas", max(low, deployment.max_replicas)))
            if high == 0:
                self.state.stop(deployment)
            elif deployment.state in ("DEPLOYMENT_STATE_STOPPED", "DEPLOYMENT_STATE_STOPPING"):
                deployment.min_replicas, deployment.max_replicas = low, high
                self.state.start(deployment, max(low, 1))
            else:
                deployment.min_replicas, deployment.max_replicas = low, high
        deployment.updated_at = self.fake.clock.now()
        deployment.etag = secrets.token_hex(6)
        return web.json_response(self.deployment_json(endpoint, deployment))

    async def delete_deployment(self, request: web.Request) -> web.Response:
        _, deployment = self._deployment(request)
        self.state.delete(deployment)
        return web.json_response({})

    # inference

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        model = str(body.get("model") or "")
        project, _, name = model.partition("/")
        endpoint = next(
            (e for e in self.state.endpoints.values() if e.project_id == project and e.name == name), None
        )
        if endpoint is None:
            raise ApiError(404, f"Unable to access model {model}: no such endpoint or model")
        routed = {entry["deploymentId"] for entry in endpoint.traffic_split if entry.get("weight", 0) > 0}
        ready = []
        for d in self.state.deployments.values():
            if d.id in routed:
                self.state.advance(d)
                if d.state == "DEPLOYMENT_STATE_READY":
                    ready.append(d)
        if not ready:
            raise ApiError(503, f"endpoint {model} has no ready deployment; start it and try again")
        if self.fake.inference_seconds:
            await asyncio.sleep(self.fake.inference_seconds)
        for d in ready:
            d.last_request = self.fake.clock.now()
        text = chat_answer(body.get("messages") or [])
        prompt = sum(len(str(m.get("content", ""))) for m in body.get("messages") or []) // 4 + 1
        return web.json_response(
            {
                "id": f"chatcmpl-{secrets.token_hex(8)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                ],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": len(text) // 4 + 1,
                    "total_tokens": prompt + len(text) // 4 + 1,
                },
            }
        )


@web.middleware
async def api_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        return _error(e)


def register(app: web.Application, fake: FakeService) -> None:
    """Add the endpoint, deployment, hardware, model, config and inference routes to ``app``."""
    routes = EndpointRoutes(fake)
    router = app.router
    router.add_get("/v2/public/inference-instance-types", routes.hardware)
    router.add_get(PROJECT + "/models", routes.list_models)
    router.add_get(PROJECT + "/configs", routes.list_configs)
    router.add_post(PROJECT + "/endpoints", routes.create_endpoint)
    router.add_get(PROJECT + "/endpoints", routes.list_endpoints)
    router.add_get(ENDPOINT, routes.retrieve_endpoint)
    router.add_patch(ENDPOINT, routes.update_endpoint)
    router.add_delete(ENDPOINT, routes.delete_endpoint)
    router.add_post(ENDPOINT + "/deployments", routes.create_deployment)
    router.add_get(ENDPOINT + "/deployments", routes.list_deployments)
    router.add_get(DEPLOYMENT, routes.retrieve_deployment)
    router.add_patch(DEPLOYMENT, routes.update_deployment)
    router.add_delete(DEPLOYMENT, routes.delete_deployment)
    router.add_post("/v1/chat/completions", routes.chat)
