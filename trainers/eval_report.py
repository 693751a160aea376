"""Evaluation reports: written and read back as JSON, summarised on one line, and a base compared with its
fine-tuned student (see :mod:`trainers.eval` for what a report holds).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.errors import UsageError

from . import metrics

TASKS: tuple[str, ...] = ("coqa", "booksum")
METRICS: dict[str, tuple[str, ...]] = {"coqa": ("em", "f1"), "booksum": metrics.ROUGE_TYPES}


@dataclass(frozen=True, slots=True)
class Reference:
    """Published base and fine-tuned figures of a task, shown beside a comparison for reference."""

    source: str
    base: dict[str, float]
    tuned: dict[str, float]


REFERENCES: dict[str, Reference] = {
    "coqa": Reference(
        "Together cookbook, multi-turn conversation fine-tuning: Llama 3.1 8B Instruct on CoQA",
        {"em": 0.043, "f1": 0.232},
        {"em": 0.62, "f1": 0.78},
    ),
    "booksum": Reference(
        "LLaMA-2-7B-32K-Chat recipe: BookSum chapter-level summaries, ROUGE F-measure",
        {"rouge1": 0.055, "rouge2": 0.008, "rougeL": 0.046},
        {"rouge1": 0.365, "rouge2": 0.086, "rougeL": 0.192},
    ),
}


def write_report(report: dict[str, Any], path: Path) -> None:
    """Write ``report`` as JSON (UTF-8, indented)."""
    try:
        path.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot write --report {path}: {e.strerror}") from None


def load_report(path: Path) -> dict[str, Any]:
    """A report written by :func:`write_report`; anything else is a :class:`UsageError`."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"cannot read --compare {path}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UsageError(f"--compare {path} is not a distill eval report (not JSON)") from None
    if not isinstance(report, dict) or report.get("task") not in TASKS or "items" not in report:
        raise UsageError(f"--compare {path} is not a distill eval report (no task or items)")
    missing = [m for m in METRICS[report["task"]] if not isinstance(report.get(m), int | float)]
    if missing:
        raise UsageError(
            f"--compare {path} lacks the {', '.join(missing)} score(s) of a {report['task']} report"
        )
    return report


def summary_line(report: dict[str, Any]) -> str:
    """``coqa  model M  n=12  em 0.083  f1 0.310``."""
    scores = "  ".join(f"{m} {report[m]:.3f}" for m in METRICS[report["task"]])
    return f"{report['task']}  model {report['model']}  n={report['n']}  {scores}"


def compare(base: dict[str, Any], tuned: dict[str, Any]) -> str:
    """Base vs fine-tuned scores side by side, with the change and the task's published figures."""
    if base["task"] != tuned["task"]:
        raise UsageError(f"--compare gives a {base['task']} report, but this evaluation is {tuned['task']}")
    task = tuned["task"]
    reference = REFERENCES[task]
    rows = [("", "base", "fine-tuned", "change", "reference base", "reference fine-tuned")]
    rows.append(("model", str(base["model"]), str(tuned["model"]), "", "", ""))
    rows.append(("n", str(base["n"]), str(tuned["n"]), "", "", ""))
    for m in METRICS[task]:
        change = tuned[m] - base[m]
        rows.append(
            (
                m,
                f"{base[m]:.3f}",
                f"{tuned[m]:.3f}",
                f"{change:+.3f}",
                f"{reference.base[m]:.3f}",
                f"{reference.tuned[m]:.3f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.append(f"reference (published, not measured here): {reference.source}")
    base_ids = {item["id"] for item in base["items"]}
    tuned_ids = {item["id"] for item in tuned["items"]}
    if base_ids != tuned_ids:
        lines.append(
            f"note: the reports score different items ({len(base_ids & tuned_ids)} in common); "
            "evaluate both models on the same --input for a fair comparison"
        )
    return "\n".join(lines)
