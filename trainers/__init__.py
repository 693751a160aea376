"""Fine-tuning back-ends behind one small interface, and evaluation of the student."""

from .base import TRAINERS, Trainer, TrainResult, TrainSpec

__all__ = ["TRAINERS", "Trainer", "TrainResult", "TrainSpec"]
