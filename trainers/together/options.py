"""Fine-tuning options the ``together`` 3.x SDK has beyond the basics, and the price check before a job starts.

* ``--from-checkpoint JOB_OR_MODEL[:STEP]``: continue from a previous job's checkpoint (the SDK then takes no base
  model: the checkpoint names it).
* ``--early-stopping-patience N`` (with ``--early-stopping-min-delta``, ``--early-stopping-warmup-evals``): stop
  when the validation loss has not improved for N evaluations; needs a validation file and ``--n-evals``.
* Before the job is created, Together's price estimate (``fine_tuning.estimate_price``) is printed, and
  ``--budget USD`` refuses a job estimated above it (exit 75, as ``distill run --budget``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from together import Together

from distill.errors import TrainerError, UsageError
from trainers.base import TrainSpec

from .client import sdk_errors

EARLY_STOPPING_KEYS = ("early_stopping_patience", "early_stopping_min_delta", "early_stopping_warmup_evals")


class TrainBudgetExceeded(TrainerError):
    """Together's estimate for the job is over ``--budget``; nothing was started."""

    exit_code = 75


def extra_options(spec: TrainSpec) -> dict[str, Any]:
    """The options of ``spec.extra`` that shape the job (recorded and hashed with the others)."""
    options: dict[str, Any] = {}
    if spec.extra.get("from_checkpoint"):
        options["from_checkpoint"] = str(spec.extra["from_checkpoint"])
    if spec.extra.get("early_stopping_patience") is not None:
        if spec.validation_file is None:
            raise UsageError("--early-stopping-patience needs a --validation-file to measure the loss on")
        for key in EARLY_STOPPING_KEYS:
            if spec.extra.get(key) is not None:
                options[key] = spec.extra[key]
    return options


def create_arguments(spec: TrainSpec, options: dict[str, Any]) -> dict[str, Any]:
    """What :func:`extra_options` adds to ``client.fine_tuning.create``."""
    arguments: dict[str, Any] = {}
    if "from_checkpoint" in options:
        arguments.update(from_checkpoint=options["from_checkpoint"], model=None)
    if "early_stopping_patience" in options:
        arguments["early_stopping_enabled"] = True
        arguments.update({key: options[key] for key in EARLY_STOPPING_KEYS if key in options})
    return arguments


def check_price(
    client: Together,
    base_url: str,
    spec: TrainSpec,
    options: dict[str, Any],
    training_id: str,
    validation_id: str,
    say: Callable[[str], None],
    warn: Callable[[str], None],
) -> float | None:
    """Print Together's estimate for the job; over ``--budget`` is a :class:`TrainBudgetExceeded`."""
    arguments: dict[str, Any] = {
        "training_file": training_id,
        "model": spec.model,
        "n_epochs": options["n_epochs"],
        "n_evals": options["n_evals"],
    }
    if validation_id:
        arguments["validation_file"] = validation_id
    if "from_checkpoint" in options:
        arguments["from_checkpoint"] = options["from_checkpoint"]
    with sdk_errors(f"estimate the price of fine-tuning {spec.model}", base_url):
        estimate = client.fine_tuning.estimate_price(**arguments)
    budget = spec.extra.get("budget")
    if not estimate.estimation_available or estimate.estimated_total_price is None:
        reason = getattr(estimate, "unavailable_reason", "no estimate")
        say(f"Together gives no price estimate for this job ({reason})")
        if budget is not None:
            raise TrainBudgetExceeded(
                f"--budget {budget:g} cannot be checked: Together gives no price estimate ({reason}); "
                "drop --budget to start the job anyway"
            )
        return None
    price = float(estimate.estimated_total_price)
    tokens = estimate.estimated_train_token_count
    say(
        f"Together estimates this fine-tune at ${price:.2f}"
        + (f" ({tokens:,.0f} training tokens)" if tokens else "")
    )
    if estimate.allowed_to_proceed is False:
        warn("distill train: warning: Together says the account's credit does not cover this estimate")
    if budget is not None and price > budget:
        raise TrainBudgetExceeded(
            f"Together estimates this fine-tune at ${price:.2f}, over --budget {budget:g}; nothing was started "
            "(raise --budget, or cut --n-epochs or the data)"
        )
    return price
