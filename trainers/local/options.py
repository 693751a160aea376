"""What a :class:`~trainers.base.TrainSpec` means on this machine, checked before anything heavy is imported."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.errors import UsageError
from trainers.base import TrainSpec

MAX_BATCH_SIZE = 8
"""What ``--batch-size max`` means locally. Together's "max" is the model's largest batch (32 for an 8B LoRA),
which one local GPU rarely holds; 8 is Together's smallest batch, and micro-batches keep it within memory."""

DEFAULT_SEED = 42
EXTRA_KEYS = {
    "n_evals": "evaluations on the validation file, spread evenly over training (int; at least 1 with one)",
    "seed": "random seed for LoRA initialisation and data order (int)",
    "micro_batch_size": "examples per forward pass; the rest of --batch-size is gradient accumulation (int)",
}


@dataclass(frozen=True, slots=True)
class LocalOptions:
    """The settings of one local fine-tune, derived from a TrainSpec."""

    output_dir: Path
    batch_size: int
    micro_batch_size: int
    seed: int
    n_evals: int

    @property
    def accumulation_steps(self) -> int:
        return -(-self.batch_size // self.micro_batch_size)

    def optimizer_steps(self, n_examples: int, n_epochs: int) -> int:
        """How many optimizer steps a fine-tune of ``n_examples`` for ``n_epochs`` takes."""
        micro_batches = -(-n_examples // self.micro_batch_size)
        return n_epochs * -(-micro_batches // self.accumulation_steps)


def local_options(spec: TrainSpec) -> LocalOptions:
    """Check the fields of ``spec`` the local back-end cannot honour and derive its settings."""
    if spec.wandb_key_env:
        raise UsageError("the local back-end does not report to Weights & Biases; drop --wandb-key-env")
    unknown = sorted(set(spec.extra) - set(EXTRA_KEYS))
    if unknown:
        known = "; ".join(f"{k}: {v}" for k, v in EXTRA_KEYS.items())
        raise UsageError(f"the local back-end has no setting {', '.join(unknown)}; it knows {known}")
    _check_positive(spec.n_epochs, "--n-epochs")
    _check_positive(spec.n_checkpoints, "--n-checkpoints")
    _check_positive(spec.max_seq_length, "--max-seq-length")
    _check_positive(spec.lora_r, "--lora-r")
    if not 0.0 <= spec.warmup_ratio <= 1.0:
        raise UsageError(f"--warmup-ratio {spec.warmup_ratio}: must be between 0 and 1")
    if not 0.0 <= spec.lora_dropout < 1.0:
        raise UsageError(f"--lora-dropout {spec.lora_dropout}: must be at least 0 and below 1")
    if spec.learning_rate <= 0:
        raise UsageError(f"--learning-rate {spec.learning_rate}: must be above 0")
    batch = MAX_BATCH_SIZE if spec.batch_size == "max" else spec.batch_size
    _check_positive(batch, "--batch-size")
    micro = _extra_int(spec.extra, "micro_batch_size", min(batch, 4))
    _check_positive(micro, "micro_batch_size")
    n_evals = _extra_int(spec.extra, "n_evals", 0)
    if n_evals < 0 or (n_evals and spec.validation_file is None):
        raise UsageError(f"--n-evals {n_evals}: evaluations need --validation-file, and cannot be negative")
    return LocalOptions(
        output_dir=spec.output_dir or default_output_dir(spec),
        batch_size=batch,
        micro_batch_size=min(micro, batch),
        seed=_extra_int(spec.extra, "seed", DEFAULT_SEED),
        n_evals=max(n_evals, 1) if spec.validation_file else 0,
    )


def default_output_dir(spec: TrainSpec) -> Path:
    """``<model's last path part>-<suffix or "distill">`` in the working directory."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(spec.model.rstrip("/")).name) or "model"
    return Path(f"{base}-{spec.suffix or 'distill'}")


def _extra_int(extra: dict[str, Any], key: str, default: int) -> int:
    value = extra.get(key, default)
    if type(value) is not int:
        raise UsageError(f"the local back-end setting {key} must be an integer, not {value!r}")
    return value


def _check_positive(value: Any, flag: str) -> None:
    if type(value) is not int or value < 1:
        raise UsageError(f"{flag} {value!r}: must be a whole number of at least 1")
