"""``distill check``: does a fine-tuning file follow Together's data rules, and how long are its examples?

The rules (from the Together API contract; 1.x of the SDK checked them locally, the service still applies them):

* the file is UTF-8 (no byte-order mark), not empty, at most 50.1 GiB, one JSON object per line, no blank lines;
* one format per file, told by the keys of each line: ``{"text"}``, ``{"messages"}``, ``{"prompt", "completion"}``
  or the preference format ``{"input": {"messages"}, "preferred_output", "non_preferred_output"}``; no other
  keys on a line;
* ``messages``: a non-empty list of objects with string ``role`` and ``content`` (and optional ``weight``, nothing
  else); roles ``system``, ``user``, ``assistant``; a system message only first; the first other message from the
  user, then user and assistant alternating; at least one assistant message; content a non-empty string; ``weight``
  the integer 0 or 1;
* ``text``, ``prompt`` and ``completion``: non-empty strings;
* with ``--max-seq-length N``: no example over N tokens.

Each problem names its line and its rule (:data:`RULES`). Token counts are estimates with ``cl100k_base`` (see
:mod:`distill.tokens`): the student's tokenizer differs, so keep a margin under the trainer's limit. An extension
other than ``.jsonl`` is a warning (Together also takes Parquet and CSV, which this command does not read).
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from distill import tokens
from distill.errors import InputError

MAX_FILE_BYTES = int(50.1 * 2**30)
MAX_PROBLEMS_KEPT = 10_000
ROLES = ("system", "user", "assistant")
FORMAT_KEYS = {
    "text": {"text"},
    "messages": {"messages"},
    "prompt-completion": {"prompt", "completion"},
    "preference": {"input", "preferred_output", "non_preferred_output"},
}
MESSAGE_KEYS = {"role", "content", "weight"}

RULES = {
    "file-empty": "the file has no examples",
    "file-size": "the file is over 50.1 GiB",
    "utf-8": "every line is UTF-8",
    "bom": "no byte-order mark at the start of the file",
    "blank-line": "no blank lines",
    "json": "every line is valid JSON",
    "object": "every line is one JSON object",
    "format-unknown": "a line is {text}, {messages}, {prompt, completion} or the preference format",
    "format-mixed": "one format per file",
    "extra-keys": "no keys beyond those of the format",
    "text": "text, prompt and completion are non-empty strings",
    "messages-list": "messages is a non-empty list of objects",
    "role": "roles are system, user or assistant",
    "content": "content is a non-empty string",
    "message-keys": "a message has role, content and optionally weight, nothing else",
    "system-first": "a system message comes only first",
    "user-first": "the first non-system message is from the user",
    "alternation": "user and assistant alternate",
    "assistant-missing": "at least one assistant message",
    "weight": "weight is the integer 0 or 1",
    "preference": "preference lines hold input.messages and assistant outputs",
    "max-seq-length": "no example longer than --max-seq-length tokens",
}


@dataclass(frozen=True, slots=True)
class Problem:
    """One broken rule: ``line`` is 1-based (0 for the file as a whole)."""

    line: int
    rule: str
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "file"
        return f"{where}: [{self.rule}] {self.message}"


@dataclass(slots=True)
class CheckReport:
    """What :func:`check_file` found. ``ok`` is true when there is no problem (warnings do not count)."""

    path: Path
    data_format: str | None = None
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    count_tokens: bool = True

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def tokens_in(self, text: str) -> int:
        """The ``cl100k_base`` tokens in ``text``; 0 when this check counts none (a run checking its own output)."""
        return tokens.count(text) if self.count_tokens else 0

    def add(self, line: int, rule: str, message: str) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS_KEPT:
            self.problems.append(Problem(line, rule, message))

    def format(self) -> str:
        """The report as ``distill check`` prints it."""
        verdict = "OK" if self.ok else f"{self.problem_count} problem(s)"
        out = [f"{self.path}: {verdict} (format: {self.data_format or 'unknown'})"]
        out += [f"  warning: {w}" for w in self.warnings]
        out += [f"  {p}" for p in self.problems]
        if self.problem_count > len(self.problems):
            out.append(f"  ... and {self.problem_count - len(self.problems)} more")
        out.append(_format_stats(self.stats))
        return "\n".join(out)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (for manifests)."""
        return {
            "path": str(self.path),
            "ok": self.ok,
            "format": self.data_format,
            "problem_count": self.problem_count,
            "problems": [{"line": p.line, "rule": p.rule, "message": p.message} for p in self.problems],
            "warnings": self.warnings,
            "stats": self.stats,
        }


def check_file(path: Path, max_seq_length: int | None = None, *, count_tokens: bool = True) -> CheckReport:
    """Check ``path`` against Together's data rules; an unreadable file is an :class:`InputError`.

    ``count_tokens=False`` skips the token statistics (most of the check's time), and with them ``max_seq_length``.
    """
    path = Path(path)
    report = CheckReport(path, count_tokens=count_tokens)
    if path.is_dir():
        raise InputError(f"{path} is a directory; distill check reads one JSONL file")
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            report.add(0, "file-size", f"{size} bytes is over the 50.1 GiB limit; split the file")
        else:
            with open(path, "rb") as f:
                _check_lines(report, enumerate(f, 1), max_seq_length)
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    if path.suffix.lower() != ".jsonl":
        report.warnings.append(
            f"Together expects a .jsonl extension for JSON lines, not {path.suffix or 'none'!r}"
        )
    return report


def _check_lines(report: CheckReport, lines: Iterator[tuple[int, bytes]], max_seq_length: int | None) -> None:
    counts: list[int] = []
    turns: list[int] = []
    formats: Counter[str] = Counter()
    for lineno, raw in lines:
        value = _parse_line(report, lineno, raw)
        if value is None:
            continue
        fmt = _format_of(report, lineno, value)
        if fmt is None:
            continue
        formats[fmt] += 1
        if report.data_format is None:
            report.data_format = fmt
        elif fmt != report.data_format:
            report.add(
                lineno,
                "format-mixed",
                f"a {fmt} line in a {report.data_format} file (the first line sets it)",
            )
            continue
        n_tokens, n_turns = CHECKERS[fmt](report, lineno, value)
        counts.append(n_tokens)
        turns.append(n_turns)
        if report.count_tokens and max_seq_length is not None and n_tokens > max_seq_length:
            report.add(
                lineno, "max-seq-length", f"about {n_tokens} tokens, over --max-seq-length {max_seq_length}"
            )
    if not counts and not report.problem_count:
        report.add(0, "file-empty", "no examples: the file is empty")
    report.stats = (
        _stats(counts, turns, max_seq_length)
        if report.count_tokens
        else {"examples": len(counts), "turns": sum(turns)}
    )


def _parse_line(report: CheckReport, lineno: int, raw: bytes) -> Any:
    if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
        report.add(lineno, "bom", "the file starts with a UTF-8 byte-order mark; save it without one")
        raw = raw[3:]
    if not raw.strip():
        report.add(lineno, "blank-line", "blank line; remove it")
        return None
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        report.add(lineno, "utf-8", f"not UTF-8 (byte {e.start} of the line)")
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = _parse_with_stdlib(report, lineno, raw)
        if value is None:
            return None
    if not isinstance(value, dict):
        report.add(lineno, "object", f"a JSON {type(value).__name__}, not an object")
        return None
    return value


def _parse_with_stdlib(report: CheckReport, lineno: int, raw: bytes) -> Any:
    try:
        json.loads(raw.decode("utf-8"))  # not the bytes: json would guess UTF-16 from NUL bytes, and fail
    except json.JSONDecodeError as e:
        report.add(lineno, "json", f"invalid JSON: {e.msg} at column {e.colno}")
        return None
    except RecursionError:
        report.add(lineno, "json", "invalid JSON: nested too deeply")
        return None
    # valid JSON that orjson refuses: an unpaired surrogate escape, a huge number or deep nesting
    report.add(
        lineno,
        "json",
        "JSON that strict parsers refuse (an unpaired \\ud800-style escape, deep nesting or a huge number)",
    )
    return None


def _format_of(report: CheckReport, lineno: int, value: dict[str, Any]) -> str | None:
    keys = set(value)
    for fmt, needed in FORMAT_KEYS.items():
        if needed <= keys:
            extra = keys - needed
            if extra:
                report.add(lineno, "extra-keys", f"unexpected key(s) {sorted(extra)} on a {fmt} line")
            return fmt
    report.add(
        lineno,
        "format-unknown",
        f"keys {sorted(keys)[:5]} match no format (text, messages, prompt/completion)",
    )
    return None


def _check_text(report: CheckReport, lineno: int, value: dict[str, Any]) -> tuple[int, int]:
    text = value["text"]
    if not isinstance(text, str) or not text.strip():
        report.add(lineno, "text", "'text' must be a non-empty string")
        return 0, 0
    return report.tokens_in(text), 1


def _check_prompt_completion(report: CheckReport, lineno: int, value: dict[str, Any]) -> tuple[int, int]:
    n = 0
    for key in ("prompt", "completion"):
        text = value[key]
        if not isinstance(text, str) or not text.strip():
            report.add(lineno, "text", f"'{key}' must be a non-empty string")
        else:
            n += report.tokens_in(text)
    return n, 2


def _check_messages(report: CheckReport, lineno: int, value: dict[str, Any]) -> tuple[int, int]:
    messages = value["messages"]
    return _check_message_list(report, lineno, messages, need_assistant=True)


def _check_message_list(
    report: CheckReport, lineno: int, messages: Any, *, need_assistant: bool, where: str = "messages"
) -> tuple[int, int]:
    if not isinstance(messages, list) or not messages:
        report.add(lineno, "messages-list", f"'{where}' must be a non-empty list")
        return 0, 0
    n_tokens, previous = 0, None
    has_assistant = False
    for i, message in enumerate(messages):
        at = f"{where}[{i}]"
        if not isinstance(message, dict):
            report.add(lineno, "messages-list", f"{at} is a {type(message).__name__}, not an object")
            continue
        extra = set(message) - MESSAGE_KEYS
        if extra:
            report.add(lineno, "message-keys", f"{at} has unexpected key(s) {sorted(extra)}")
        role, content = message.get("role"), message.get("content")
        if isinstance(content, list):
            report.add(lineno, "content", f"{at}.content is a list of parts; Together wants one string")
        elif not isinstance(content, str) or not content.strip():
            report.add(lineno, "content", f"{at}.content must be a non-empty string")
        else:
            n_tokens += tokens.PER_MESSAGE_OVERHEAD + report.tokens_in(content)
        if "weight" in message and (type(message["weight"]) is not int or message["weight"] not in (0, 1)):
            report.add(
                lineno, "weight", f"{at}.weight is {message['weight']!r}; it must be the integer 0 or 1"
            )
        if role not in ROLES:
            report.add(lineno, "role", f"{at}.role is {role!r}; use system, user or assistant")
            continue  # judged without it: one problem is reported once
        if role == "system":
            if i != 0:
                report.add(lineno, "system-first", f"{at} is a system message after the start")
        elif previous in (None, "system"):
            if role != "user":
                report.add(
                    lineno, "user-first", f"{at} is the first non-system message and is from the {role}"
                )
        elif role == previous:
            report.add(lineno, "alternation", f"{at} is a second {role} message in a row")
        has_assistant = has_assistant or role == "assistant"
        previous = role
    if need_assistant and not has_assistant:
        report.add(lineno, "assistant-missing", f"'{where}' has no assistant message to train on")
    return n_tokens + tokens.PER_REQUEST_OVERHEAD, len(messages)


def _check_preference(report: CheckReport, lineno: int, value: dict[str, Any]) -> tuple[int, int]:
    source = value["input"]
    if not isinstance(source, dict) or "messages" not in source:
        report.add(lineno, "preference", "'input' must be an object with 'messages'")
        return 0, 0
    n_tokens, n_turns = _check_message_list(
        report, lineno, source["messages"], need_assistant=False, where="input.messages"
    )
    longest = 0
    for key in ("preferred_output", "non_preferred_output"):
        output = value[key]
        if not isinstance(output, list) or not output:
            report.add(lineno, "preference", f"'{key}' must be a non-empty list of assistant messages")
            continue
        if any(not isinstance(m, dict) or m.get("role") != "assistant" for m in output):
            report.add(lineno, "preference", f"'{key}' may hold assistant messages only")
        for i, m in enumerate(output):
            content = m.get("content") if isinstance(m, dict) else None
            if not isinstance(content, str) or not content.strip():
                report.add(lineno, "content", f"{key}[{i}].content must be a non-empty string")
        longest = max(
            longest,
            sum(
                report.tokens_in(m["content"])
                for m in output
                if isinstance(m, dict) and isinstance(m.get("content"), str)
            ),
        )
    return n_tokens + longest, n_turns + 1


CHECKERS = {
    "text": _check_text,
    "messages": _check_messages,
    "prompt-completion": _check_prompt_completion,
    "preference": _check_preference,
}


def _stats(counts: list[int], turns: list[int], max_seq_length: int | None) -> dict[str, Any]:
    stats: dict[str, Any] = {"examples": len(counts), "turns": sum(turns)}
    if counts:
        ordered = sorted(counts)
        stats["tokens"] = {
            "total": sum(ordered),
            "min": ordered[0],
            "p50": _quantile(ordered, 0.5),
            "p90": _quantile(ordered, 0.9),
            "p99": _quantile(ordered, 0.99),
            "max": ordered[-1],
            "mean": round(statistics.fmean(ordered), 1),
        }
    if max_seq_length is not None:
        stats["max_seq_length"] = max_seq_length
        stats["over_max_seq_length"] = sum(1 for c in counts if c > max_seq_length)
    return stats


def _quantile(ordered: list[int], q: float) -> int:
    """The nearest-rank quantile of sorted ``ordered``."""
    rank = max(1, -(-len(ordered) * q // 1))
    return ordered[int(rank) - 1]


def _format_stats(stats: dict[str, Any]) -> str:
    line = f"  examples: {stats.get('examples', 0)}, turns: {stats.get('turns', 0)}"
    t = stats.get("tokens")
    if t:
        line += (
            f"\n  tokens (cl100k estimate): total {t['total']}, min {t['min']}, p50 {t['p50']}, p90 {t['p90']}, "
            f"p99 {t['p99']}, max {t['max']}"
        )
    if "max_seq_length" in stats:
        line += f"\n  over --max-seq-length {stats['max_seq_length']}: {stats['over_max_seq_length']}"
    return line
