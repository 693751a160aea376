"""Per-model fine-tuning limits (``GET /v1/fine-tunes/models/limits``) and the checks of a job request body."""

from __future__ import annotations

from typing import Any

SUFFIX_MAX_CHARS = 40


def model_limits(model: str) -> dict[str, Any]:
    """The limits the fake reports for ``model``: the values the real service reports for an 8B model."""
    return {
        "model_name": model,
        "default_gradient_accumulation_steps": 1,
        "lora_training": {
            "default_rank": 8,
            "max_batch_size": 32,
            "max_batch_size_dpo": 16,
            "max_rank": 64,
            "min_batch_size": 8,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        },
        "full_training": {"max_batch_size": 32, "max_batch_size_dpo": 16, "min_batch_size": 8},
        "max_learning_rate": 1,
        "min_learning_rate": 0,
        "max_num_checkpoints": 10,
        "max_num_epochs": 20,
        "max_num_evals": 10,
        "max_seq_length_sft": 8192,
        "max_seq_length_dpo": 8192,
        "min_max_seq_length": 512,
        "merge_output_lora": True,
        "supports_full_training": True,
        "supports_reasoning": False,
        "supports_tools": False,
        "supports_vision": False,
    }


class BadRequest(Exception):
    """The request body breaks a rule; ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _int_in(body: dict[str, Any], name: str, low: int, high: int, default: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high} (got {value!r})", name)
    return value


def _number_in(body: dict[str, Any], name: str, low: float, high: float, default: float) -> float:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise BadRequest(f"{name} must be a number from {low} to {high} (got {value!r})", name)
    return float(value)


def check_training_type(training_type: Any, limits: dict[str, Any]) -> dict[str, Any]:
    """The batch-size limits of the requested training type (LoRA unless ``{"type": "Full"}``)."""
    if training_type is None:
        return limits["lora_training"]
    if not isinstance(training_type, dict) or training_type.get("type") not in ("Lora", "Full"):
        raise BadRequest('training_type.type must be "Lora" or "Full"', "training_type")
    if training_type["type"] == "Full":
        if not limits["supports_full_training"]:
            raise BadRequest(f"full training is not supported for {limits['model_name']}", "training_type")
        return limits["full_training"]
    _int_in(training_type, "lora_r", 1, limits["lora_training"]["max_rank"], 0)
    alpha = training_type.get("lora_alpha")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or alpha <= 0:
        raise BadRequest("lora_alpha must be a positive number", "training_type.lora_alpha")
    dropout = training_type.get("lora_dropout", 0.0)
    if not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise BadRequest("lora_dropout must be in [0, 1)", "training_type.lora_dropout")
    return limits["lora_training"]


def check_training_method(method: Any) -> None:
    """SFT with ``train_on_inputs`` true, false or "auto"; or DPO."""
    if method is None:
        return
    if not isinstance(method, dict) or method.get("method") not in ("sft", "dpo"):
        raise BadRequest('training_method.method must be "sft" or "dpo"', "training_method")
    if method["method"] == "sft" and method.get("train_on_inputs", "auto") not in (True, False, "auto"):
        raise BadRequest('train_on_inputs must be true, false or "auto"', "training_method.train_on_inputs")


def check_job_body(body: dict[str, Any], limits: dict[str, Any], *, has_validation_file: bool) -> int:
    """Check the hyper-parameters of a ``POST /v1/fine-tunes`` body; return the batch size it resolves to."""
    _int_in(body, "n_epochs", 1, limits["max_num_epochs"], 1)
    _int_in(body, "n_checkpoints", 1, limits["max_num_checkpoints"], 1)
    n_evals = _int_in(body, "n_evals", 0, limits["max_num_evals"], 0)
    if n_evals and not has_validation_file:
        raise BadRequest("n_evals > 0 needs a validation_file", "n_evals")
    learning_rate = body.get("learning_rate", 1e-5)
    if (
        isinstance(learning_rate, bool)
        or not isinstance(learning_rate, int | float)
        or not limits["min_learning_rate"] < learning_rate <= limits["max_learning_rate"]
    ):
        raise BadRequest(
            f"learning_rate must be in ({limits['min_learning_rate']}, 1] (got {learning_rate!r})"
        )
    _number_in(body, "warmup_ratio", 0.0, 1.0, 0.0)
    _number_in(body, "max_grad_norm", 0.0, float("inf"), 1.0)
    _number_in(body, "weight_decay", 0.0, float("inf"), 0.0)
    scheduler = body.get("lr_scheduler") or {"lr_scheduler_type": "cosine"}
    if scheduler.get("lr_scheduler_type") not in ("linear", "cosine"):
        raise BadRequest('lr_scheduler.lr_scheduler_type must be "linear" or "cosine"', "lr_scheduler")
    batch_limits = check_training_type(body.get("training_type"), limits)
    check_training_method(body.get("training_method"))
    suffix = body.get("suffix")
    if suffix is not None and (not isinstance(suffix, str) or len(suffix) > SUFFIX_MAX_CHARS):
        raise BadRequest(f"suffix must be a string of at most {SUFFIX_MAX_CHARS} characters", "suffix")
    batch_size = body.get("batch_size", "max")
    if batch_size == "max":
        return int(batch_limits["max_batch_size"])
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise BadRequest('batch_size must be an integer or "max"', "batch_size")
    if not batch_limits["min_batch_size"] <= batch_size <= batch_limits["max_batch_size"]:
        raise BadRequest(
            f"batch_size must be from {batch_limits['min_batch_size']} to {batch_limits['max_batch_size']}",
            "batch_size",
        )
    return batch_size
