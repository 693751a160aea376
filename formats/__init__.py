"""Readers (datasets in) and writers (fine-tuning files out)."""
