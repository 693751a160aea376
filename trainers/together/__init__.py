"""The Together fine-tuning back-end (``--backend together``), through the ``together`` SDK 3.x."""

from .trainer import TogetherTrainer, run_file_check

__all__ = ["TogetherTrainer", "run_file_check"]
