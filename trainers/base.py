"""The trainer interface: one class per back-end, registered by name (``--backend``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from distill.registry import Registry

TRAINERS: Registry[type[Trainer]] = Registry(
    "trainer back-end",
    "distill.trainers",
    builtin_modules=("trainers.together", "trainers.local"),
    flag="--backend",
)

TrainOnInputs = Literal["true", "false", "auto", "boilerplate"]


@dataclass(slots=True)
class TrainSpec:
    """What to fine-tune on what. Fields a back-end does not support are rejected by it with a UsageError."""

    training_file: Path
    model: str
    validation_file: Path | None = None
    n_epochs: int = 1
    n_checkpoints: int = 1
    batch_size: int | Literal["max"] = "max"
    learning_rate: float = 1e-5
    warmup_ratio: float = 0.0
    lora: bool = True
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    train_on_inputs: TrainOnInputs = "auto"
    suffix: str | None = None
    wandb_key_env: str | None = None
    max_seq_length: int = 2048
    output_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class TrainResult:
    """How a fine-tune ended. ``model`` is the name (or local path) to evaluate the student with."""

    job_id: str
    status: str
    model: str | None
    details: dict[str, Any] = field(default_factory=dict)


class Trainer(ABC):
    name: ClassVar[str]

    @abstractmethod
    def train(self, spec: TrainSpec) -> TrainResult:
        """Start (or re-attach to) the fine-tune described by ``spec`` and follow it to a terminal state."""
