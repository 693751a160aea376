"""Which hardware a model can be deployed on at Together, and at what price (through the ``together`` 3.x SDK).

A model is looked up among the project's own models (a fine-tune's output is one) and otherwise taken as a public
model. Its *configs* (``client.models.configs.list``) are the ways Together can run it: each names the
accelerator type and count in its selectors (``1xnvidia-h100-80gb``); the hardware catalog
(``client.endpoints.hardware.list``) gives each one's price per replica-hour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import together
from together import Together

from distill.errors import TrainerError, UsageError

from .client import sdk_errors, server_message


class NotDeployable(TrainerError):
    """Together has no hardware for this model (it answers 404 for ``-Reference`` bases, for example)."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class HardwareOption:
    """One way to run a model: the config to deploy with, its hardware and its list price."""

    hardware: str
    label: str
    config: str
    price_cents_per_hour: int | None

    @property
    def price(self) -> str:
        if self.price_cents_per_hour is None:
            return "price unknown"
        return f"${self.price_cents_per_hour / 100:.2f}/hour per replica"


@dataclass(frozen=True, slots=True)
class Deployable:
    """A model resource (``projects/P/models/ID``) and the hardware it can run on, cheapest first."""

    name: str
    resource: str
    options: tuple[HardwareOption, ...]

    def pick(self, hardware: str | None) -> HardwareOption:
        """The option ``--hardware`` names (by name or label), or the cheapest."""
        if hardware is None:
            return self.options[0]
        for option in self.options:
            if hardware.lower() in (option.hardware.lower(), option.label.lower()):
                return option
        names = ", ".join(o.hardware for o in self.options)
        raise UsageError(f"--hardware {hardware} is not offered for {self.name}; choose one of: {names}")


def not_deployable(model: str, why: str) -> NotDeployable:
    reference = model.endswith("-Reference")
    instead = (
        f"evaluate its serverless twin instead (e.g. --model {model.removesuffix('-Reference')}-Turbo through "
        "--base-url https://api.together.xyz/v1), or deploy a model fine-tuned from it"
        if reference
        else "check the name with 'distill train --status', or evaluate it serverless through --base-url "
        "https://api.together.xyz/v1 if Together serves it"
    )
    return NotDeployable(f"Together cannot deploy {model}: {why}; {instead}")


def _hardware_of(config: Any) -> str | None:
    selectors = {s.key: s.value for s in config.selectors or []}
    kind, count = selectors.get("accelerator_type"), selectors.get("accelerator_count")
    return f"{count}x{kind}" if kind and count else None


def _label(hardware: str, catalog: dict[str, Any]) -> str:
    instance = catalog.get(hardware)
    return str(instance.description) if instance is not None and instance.description else hardware


def find_custom_model(client: Together, model: str, base_url: str) -> Any | None:
    """The project's model named ``model`` (a fine-tune's output), if there is one."""
    with sdk_errors(f"list the project's models to find {model}", base_url):
        for candidate in client.models.list():
            if candidate.name == model or candidate.id == model:
                return candidate
    return None


def deployable(client: Together, model: str, base_url: str) -> Deployable:
    """Where ``model`` can run; a :class:`NotDeployable` when Together offers no hardware for it."""
    custom = find_custom_model(client, model, base_url)
    with sdk_errors(f"list the hardware for {model}", base_url):
        try:
            if custom is not None:
                resource = f"projects/{custom.project_id}/models/{custom.id}"
                configs = list(client.models.configs.list(reference_model=custom.base_model or resource))
            else:
                configs = list(client.models.configs.list(reference_model_id=model))
                resource = configs[0].reference_model if configs else ""
        except together.NotFoundError as e:
            raise not_deployable(model, f"it answers 404 for its hardware ({server_message(e)})") from None
        catalog = {instance.name: instance for instance in client.endpoints.hardware.list().data}
    options = []
    for config in configs:
        hardware = _hardware_of(config)
        if hardware is None:
            continue
        instance = catalog.get(hardware)
        options.append(
            HardwareOption(
                hardware=hardware,
                label=_label(hardware, catalog),
                config=f"projects/{config.project_id}/configs/{config.id}",
                price_cents_per_hour=instance.price_cents_per_hour if instance is not None else None,
            )
        )
    if not options:
        raise not_deployable(model, "it lists no hardware for it")
    options.sort(key=lambda o: (o.price_cents_per_hour is None, o.price_cents_per_hour or 0, o.hardware))
    return Deployable(model, resource, tuple(options))
