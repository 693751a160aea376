"""The record a finished local fine-tune leaves in its output folder, so that the same command is not run twice.

``distill-train.json`` holds the training file's sha256, the settings that shape the model, and the result.
Running the same fine-tune again into the same folder returns that result instead of training again; a folder
that holds anything else is refused rather than overwritten.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from distill.errors import UsageError
from trainers.base import TrainResult, TrainSpec

MANIFEST_NAME = "distill-train.json"
# Fields of TrainSpec that do not change the trained model.
_NOT_SHAPING = {"training_file", "validation_file", "output_dir", "suffix", "wandb_key_env"}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_key(spec: TrainSpec) -> dict[str, Any]:
    """What identifies a fine-tune: the data's hashes and every setting that shapes the result."""
    settings = {k: v for k, v in asdict(spec).items() if k not in _NOT_SHAPING}
    return {
        "backend": "local",
        "training_file_sha256": file_sha256(spec.training_file),
        "validation_file_sha256": file_sha256(spec.validation_file) if spec.validation_file else None,
        "settings": orjson.loads(orjson.dumps(settings, default=str)),
    }


def finished_result(output_dir: Path, key: dict[str, Any]) -> TrainResult | None:
    """The recorded result of this very fine-tune, None for a fresh folder; refuse a folder holding other things."""
    if not output_dir.exists() or not any(output_dir.iterdir()):
        return None
    manifest = output_dir / MANIFEST_NAME
    try:
        recorded = orjson.loads(manifest.read_bytes()) if manifest.is_file() else None
    except orjson.JSONDecodeError:
        recorded = None
    if recorded is None or recorded.get("key") != key:
        what = "a different fine-tune" if recorded else "files of its own"
        raise UsageError(
            f"--output-dir {output_dir} already holds {what}; choose an empty folder or delete this one"
        )
    return TrainResult(**recorded["result"])


def record(output_dir: Path, key: dict[str, Any], result: TrainResult) -> None:
    """Write the manifest once the model is saved."""
    body = {"key": key, "result": asdict(result)}
    (output_dir / MANIFEST_NAME).write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2))
