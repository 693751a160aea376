"""The fine-tune itself: TRL's SFTTrainer over pre-labelled examples, LoRA through peft (the ``local`` extra).

Imported only when a local fine-tune runs, so that ``import trainers.local`` works without torch.

SFTTrainer takes a dataset that already has ``input_ids`` and ``labels`` as it is (TRL >= 1.x), so the loss
mask is entirely :mod:`trainers.local.masking`'s; TRL contributes the loop: batching and padding, gradient
accumulation, the cosine schedule, bf16 autocast, activation checkpointing and checkpoint saving.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from datasets.utils import logging as datasets_logging
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, set_seed
from transformers.trainer_callback import PrinterCallback
from transformers.utils import logging as transformers_logging
from trl import SFTConfig, SFTTrainer

from distill.errors import TrainerError
from trainers.base import TrainSpec

from .data import TrainingData
from .masking import LabelledExample, label_record, resolve_mode
from .model_ref import resolve_model
from .options import LocalOptions


@dataclass(frozen=True, slots=True)
class Device:
    """Where training runs and in which precision."""

    name: str
    bf16: bool

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.bf16 else torch.float32

    @property
    def checkpointing(self) -> bool:
        """Recompute activations in the backward pass: on a GPU, memory is what limits the model's size."""
        return self.name == "cuda"


@dataclass(slots=True)
class LabelledSet:
    """The examples of one file after tokenizing, labelling and truncation."""

    examples: list[LabelledExample]
    mode: str
    dropped: list[str] = field(default_factory=list)

    def dataset(self) -> Dataset:
        return Dataset.from_dict(
            {"input_ids": [e.input_ids for e in self.examples], "labels": [e.labels for e in self.examples]}
        )

    def stats(self) -> dict[str, Any]:
        return {
            "examples": len(self.examples),
            "dropped_examples": self.dropped,
            "tokens": sum(len(e.input_ids) for e in self.examples),
            "trained_tokens": sum(e.trained_tokens for e in self.examples),
            "train_on_inputs": self.mode,
        }


@dataclass(slots=True)
class FitOutcome:
    """A finished fine-tune, still in memory: the trainer holds the (peft-wrapped) model."""

    trainer: SFTTrainer
    device: Device
    train: LabelledSet
    losses: list[float]
    eval_losses: list[float]
    seconds: float

    @property
    def model(self) -> PreTrainedModel:
        return self.trainer.model

    def details(self, spec: TrainSpec) -> dict[str, Any]:
        return {
            "base_model": spec.model,
            "method": "lora" if spec.lora else "full",
            "device": self.device.name,
            "dtype": str(self.device.dtype).removeprefix("torch."),
            "steps": self.trainer.state.global_step,
            "losses": self.losses,
            "eval_losses": self.eval_losses,
            "seconds": round(self.seconds, 3),
            **self.train.stats(),
        }


def pick_device() -> Device:
    """The GPU with bf16 where there is one, else the CPU in float32."""
    if torch.cuda.is_available():
        return Device("cuda", bf16=torch.cuda.is_bf16_supported())
    return Device("cpu", bf16=False)


def load_tokenizer(model_ref: str) -> Any:
    """The tokenizer saved with the model (a folder or a hub name, checked by :func:`resolve_model`)."""
    source = resolve_model(model_ref)
    try:
        return AutoTokenizer.from_pretrained(source.ref, local_files_only=source.local_files_only)
    except OSError as e:
        raise TrainerError(f"cannot load the tokenizer of --model {model_ref}: {e}") from None


def load_model(model_ref: str, device: Device) -> PreTrainedModel:
    """The causal LM to fine-tune, in the device's precision."""
    source = resolve_model(model_ref)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source.ref, dtype=device.dtype, local_files_only=source.local_files_only
        )
    except OSError as e:
        raise TrainerError(f"cannot load --model {model_ref}: {e}") from None
    model.config.use_cache = False  # the KV cache only serves generation and clashes with checkpointing
    return model


def label_data(tokenizer: Any, data: TrainingData, train_on_inputs: str, max_length: int) -> LabelledSet:
    """Tokenize and label every record; drop (and name) those with nothing left to train after truncation."""
    mode = resolve_mode(train_on_inputs, data.format)
    labelled = LabelledSet(examples=[], mode=mode)
    for record in data.records:
        example = label_record(tokenizer, record, mode).truncated(max_length)
        if example.trained_tokens:
            labelled.examples.append(example)
        else:
            labelled.dropped.append(example.source)
    if not labelled.examples:
        raise TrainerError(
            f"{data.path}: no example has a token to train on within --max-seq-length {max_length} under "
            f"--train-on-inputs {train_on_inputs}; raise --max-seq-length or check the assistant turns"
        )
    return labelled


def lora_config(spec: TrainSpec) -> LoraConfig:
    """LoRA on every linear layer but the output head, as Together's ``lora_trainable_modules="all-linear"``."""
    return LoraConfig(
        r=spec.lora_r,
        lora_alpha=spec.lora_alpha,
        lora_dropout=spec.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def sft_config(
    spec: TrainSpec, options: LocalOptions, device: Device, n_examples: int, *, quiet: bool = False
) -> SFTConfig:
    """TRL's settings for this fine-tune (Together's defaults: cosine schedule, grad-norm 1, no weight decay)."""
    total_steps = options.optimizer_steps(n_examples, spec.n_epochs)
    checkpoints = spec.n_checkpoints > 1
    return SFTConfig(
        output_dir=str(options.output_dir),
        num_train_epochs=spec.n_epochs,
        per_device_train_batch_size=options.micro_batch_size,
        per_device_eval_batch_size=options.micro_batch_size,
        gradient_accumulation_steps=options.accumulation_steps,
        learning_rate=spec.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=math.ceil(total_steps * spec.warmup_ratio),
        max_grad_norm=1.0,
        weight_decay=0.0,
        optim="adamw_torch",
        bf16=device.bf16,
        use_cpu=device.name == "cpu",
        activation_checkpointing=device.checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if device.checkpointing else None,
        max_length=spec.max_seq_length,
        packing=False,
        logging_strategy="steps",
        logging_steps=1,
        eval_strategy="steps" if options.n_evals else "no",
        eval_steps=max(1, total_steps // options.n_evals) if options.n_evals else None,
        save_strategy="steps" if checkpoints else "no",
        save_steps=max(1, total_steps // spec.n_checkpoints) if checkpoints else 500,
        save_only_model=True,
        report_to="none",
        disable_tqdm=quiet,
        seed=options.seed,
        data_seed=options.seed,
    )


def fit(
    spec: TrainSpec,
    options: LocalOptions,
    train_data: TrainingData,
    eval_data: TrainingData | None,
    *,
    quiet: bool = False,
) -> FitOutcome:
    """Run the fine-tune described by ``spec`` and return it, not yet saved.

    ``quiet`` drops the progress bars and the per-step log lines (``distill train --quiet``).
    """
    set_seed(options.seed)
    device = pick_device()
    tokenizer = load_tokenizer(spec.model)
    train_set = label_data(tokenizer, train_data, spec.train_on_inputs, spec.max_seq_length)
    eval_set = (
        label_data(tokenizer, eval_data, spec.train_on_inputs, spec.max_seq_length) if eval_data else None
    )
    with _library_output(quiet=quiet):
        trainer = SFTTrainer(
            model=load_model(spec.model, device),
            args=sft_config(spec, options, device, len(train_set.examples), quiet=quiet),
            train_dataset=train_set.dataset(),
            eval_dataset=eval_set.dataset() if eval_set else None,
            processing_class=tokenizer,
            peft_config=lora_config(spec) if spec.lora else None,
        )
        if quiet:
            trainer.remove_callback(PrinterCallback)  # it prints every log line when tqdm is off
        started = time.monotonic()
        trainer.train()
    history = trainer.state.log_history
    return FitOutcome(
        trainer=trainer,
        device=device,
        train=train_set,
        losses=[entry["loss"] for entry in history if "loss" in entry],
        eval_losses=[entry["eval_loss"] for entry in history if "eval_loss" in entry],
        seconds=time.monotonic() - started,
    )


@contextmanager
def _library_output(*, quiet: bool) -> Iterator[None]:
    """Hide the libraries' progress bars when ``quiet``, and their notes to each other always; restore after."""
    bars = (
        [m for m in (datasets_logging, transformers_logging) if m.is_progress_bar_enabled()] if quiet else []
    )
    for module in bars:
        module.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            # Raised inside TRL/peft on an API transformers renamed; nothing a user of distill can act on.
            warnings.filterwarnings(
                "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
            )
            yield
    finally:
        for module in bars:
            module.enable_progress_bar()


def save(outcome: FitOutcome, output_dir: Path) -> None:
    """Write the adapter (or the full model) and the tokenizer to ``output_dir``."""
    outcome.trainer.save_model(str(output_dir))
