"""``OUTPUT.manifest.json``: what a run read, wrote, sent and spent, written beside its output.

``job`` is the run's :class:`~distill.runner.RunJob`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from formats.rejects import rejects_path_for

from .export import ExportResult
from .stats import RunStats


def manifest_path(output: Path) -> Path:
    return output.with_name(output.name + ".manifest.json")


def write_manifest(
    job: Any, run_id: str, stats: RunStats, result: ExportResult, reader_stats, rejected: int = 0
) -> Path:
    path = manifest_path(job.output)
    settings = asdict(job.settings)
    manifest = {
        "distill_version": _version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run_id": run_id,
        "input": {"path": str(job.input), "format": job.input_format, "sha256": sha256_file(job.input)},
        "output": {"path": str(job.output), "format": job.output_format, "sha256": sha256_file(job.output)},
        "validation": {
            "path": str(result.validation_path),
            "fraction": job.val_fraction,
            "conversations": result.validation_written,
            "sha256": sha256_file(result.validation_path),
        }
        if result.validation_path
        else None,
        "cache": str(job.cache),
        "model": job.settings.model,
        "settings": settings,
        "files": files_written(job, result, rejected),
        "cost_usd": {"this_run": stats.cost_usd, "before": stats.cost_before_usd, "budget": job.budget},
        "counts": {
            "read": stats.conversations_read,
            "written": result.written,
            "failed": result.failed,
            "incomplete": result.incomplete,
            "rejects": stats.rejects,
            "turns": result.turns,
            "finished_length": result.finished_length,
        },
        "tokens": {"prompt": result.prompt_tokens, "completion": result.completion_tokens},
        "this_run": stats.to_dict(),
        "reader": reader_stats,
    }
    path.write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS, default=str))
    return path


def files_written(job: Any, result: ExportResult, rejected: int) -> dict:
    """Each file the run wrote and what it holds: conversations, or rejected records."""
    files = {
        "output": {"path": str(job.output), "conversations": result.written - result.validation_written},
        "manifest": {"path": str(manifest_path(job.output))},
    }
    if result.validation_path is not None:
        files["validation"] = {
            "path": str(result.validation_path),
            "conversations": result.validation_written,
        }
    if rejected:
        files["rejects"] = {"path": str(rejects_path_for(job.output)), "records": rejected}
    return files


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _version() -> str:
    from . import __version__

    return __version__
