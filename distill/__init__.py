"""distill: turn conversations into fine-tuning data with a teacher model, then train and evaluate the student."""

__version__ = "0.1.0"
