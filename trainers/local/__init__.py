"""``--backend local``: fine-tune on this machine with TRL and LoRA (the optional extra ``local``).

The Gemma-2 recipe run locally: the file is tokenized with the model's chat template, the loss mask is read
off that template (:mod:`trainers.local.masking`), and TRL's SFTTrainer trains a LoRA adapter (or the whole
model with ``lora=False``) on the CPU, or on a GPU in bf16 with activation checkpointing. The adapter and the
tokenizer are saved to ``spec.output_dir``, which is also the job id and the model to evaluate.

torch, transformers, peft and trl are imported only inside :meth:`LocalTrainer.train`, so this package (and
the trainer registry) imports without the extra.
"""

from __future__ import annotations

import argparse
import importlib.util
from dataclasses import replace
from types import ModuleType

from distill.errors import UsageError
from trainers.base import TRAINERS, Trainer, TrainResult, TrainSpec

from . import manifest
from .data import read_training_file
from .model_ref import resolve_model
from .options import local_options

INSTALL_HINT = "pip install 'distill[local]'"


@TRAINERS.register("local")
class LocalTrainer(Trainer):
    """Fine-tunes ``spec.model`` (a local path or a hub name) into ``spec.output_dir``."""

    name = "local"

    def __init__(self, *, quiet: bool = False) -> None:
        self.quiet = quiet

    @classmethod
    def from_cli(cls, args: argparse.Namespace) -> LocalTrainer:
        """Built by ``distill train``: ``--quiet`` hides the progress bars and per-step logs."""
        return cls(quiet=bool(getattr(args, "quiet", False)))

    def train(self, spec: TrainSpec) -> TrainResult:
        """Train, save the adapter and tokenizer, and return the output folder as job id and model.

        Running the same spec into the same folder again returns the recorded result without training.
        """
        options = local_options(spec)
        train_data = read_training_file(spec.training_file)
        eval_data = read_training_file(spec.validation_file) if spec.validation_file else None
        key = manifest.run_key(spec)
        if (done := manifest.finished_result(options.output_dir, key)) is not None:
            return replace(done, details={**done.details, "reused": True})
        _require_extra()
        resolve_model(
            spec.model
        )  # a missing folder or an unreachable hub is said now, before the heavy imports
        training = _import_training()
        outcome = training.fit(spec, options, train_data, eval_data, quiet=self.quiet)
        training.save(outcome, options.output_dir)
        result = TrainResult(
            job_id=str(options.output_dir),
            status="completed",
            model=str(options.output_dir),
            details=outcome.details(spec),
        )
        manifest.record(options.output_dir, key, result)
        return result


def _require_extra() -> None:
    """The extra's packages are installed (found, not imported: importing torch takes seconds)."""
    for name in ("torch", "transformers", "peft", "trl"):
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise UsageError(f"--backend local needs the 'local' extra ({name} is missing): {INSTALL_HINT}")


def _import_training() -> ModuleType:
    try:
        from . import training
    except ImportError as e:
        raise UsageError(
            f"--backend local needs the 'local' extra ({e.name} is missing): {INSTALL_HINT}"
        ) from None
    return training
