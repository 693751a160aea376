"""The settings of the local teacher: one frozen dataclass, also a JSON-able dict and a set of CLI flags.

Every field is a knob a test or benchmark may turn. Fault rates are probabilities per admitted request; they
are mutually exclusive (one uniform draw picks at most one fault), so their sum must not exceed 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import orjson

from distill.errors import UsageError

FAULT_KINDS: tuple[str, ...] = ("server_error", "hang", "reset", "truncated", "empty", "throttle")
TOKEN_COUNTERS: tuple[str, ...] = ("tiktoken", "words")
KNOBS_ENV = "DISTILL_TEACHER_KNOBS"
TPM_CHARGES: tuple[str, ...] = ("usage", "max_tokens")


def _knob(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True, slots=True)
class TeacherKnobs:
    """How the local teacher behaves. ``TeacherKnobs()`` is a fast, honest server with no limits or faults."""

    api_key: str | None = _knob(
        None, "require 'Authorization: Bearer KEY' (401 otherwise); any key when unset"
    )
    model: str = _knob("distill-teacher", "model name listed by GET /v1/models (requests may name any model)")
    answer_words: int = _knob(0, "filler words appended to every answer, to make answers long")
    token_counter: str = _knob("tiktoken", "how usage is counted: 'tiktoken' (cl100k_base) or 'words'")
    latency: float = _knob(0.0, "seconds every admitted request waits before it is answered")
    latency_jitter: float = _knob(
        0.0, "extra seconds, uniform in [0, JITTER), drawn per request from its hash"
    )
    rpm: float | None = _knob(None, "requests per minute, enforced over one-second windows (RPM/60 a window)")
    tpm: float | None = _knob(None, "tokens per minute, enforced over one-second windows (TPM/60 a window)")
    tpm_charge: str = _knob(
        "usage", "what a request costs under --tpm: 'usage' (prompt+answer) or 'max_tokens'"
    )
    window: float = _knob(1.0, "length of a rate-limit window in seconds")
    retry_after: bool = _knob(True, "send Retry-After (whole seconds) and retry-after-ms on a 429")
    error_rate: float = _knob(0.0, "share of requests answered 500 or 503")
    hang_rate: float = _knob(0.0, "share of requests never answered (until the client gives up)")
    reset_rate: float = _knob(0.0, "share of requests whose connection is reset without an answer")
    truncated_rate: float = _knob(0.0, "share of requests answered 200 with a truncated JSON body")
    empty_rate: float = _knob(0.0, "share of requests answered 200 with an empty 'choices' list")
    throttle_rate: float = _knob(0.0, "share of requests answered 429 regardless of the rate limit")
    throttle_retry_after: float = _knob(0.05, "seconds a throttle 429 asks the client to wait")
    fail_first_attempts: int = _knob(0, "the first N admitted attempts of every distinct request fail")
    fail_first_kind: str = _knob(
        "server_error", f"the fault those attempts get: one of {', '.join(FAULT_KINDS)}"
    )
    permanent_marker: str | None = _knob(
        None, "requests whose last user turn contains this text fail for good"
    )
    permanent_status: int = _knob(400, "the status of those permanent failures (400, 404, 422, ...)")
    hang_seconds: float = _knob(3600.0, "how long a hung request waits before the server gives up on it")
    seed: int = _knob(
        0, "seed of the fault and jitter draws (same seed, same request, same attempt: same fate)"
    )
    track_hashes: bool = _knob(
        True, "keep per-request-hash counts for GET /stats (memory grows with requests)"
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`UsageError` naming the flag of the first knob that is out of range."""
        rates = {
            k: getattr(self, f"{k}_rate")
            for k in ("error", "hang", "reset", "truncated", "empty", "throttle")
        }
        for name, rate in rates.items():
            if not 0.0 <= rate <= 1.0:
                raise UsageError(f"--{name}-rate must be between 0 and 1, got {rate}")
        if sum(rates.values()) > 1.0 + 1e-9:
            raise UsageError("the fault rates (--error-rate, --hang-rate, ...) must add up to at most 1")
        for name in ("latency", "latency_jitter", "throttle_retry_after", "hang_seconds"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{_flag(name)} must not be negative, got {getattr(self, name)}")
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UsageError(f"--{name} must be positive (leave it out for no limit), got {value}")
        if self.window <= 0:
            raise UsageError(f"--window must be positive, got {self.window}")
        if self.answer_words < 0 or self.fail_first_attempts < 0:
            raise UsageError("--answer-words and --fail-first-attempts must not be negative")
        if self.fail_first_kind not in FAULT_KINDS:
            raise UsageError(
                f"--fail-first-kind must be one of {', '.join(FAULT_KINDS)}, got {self.fail_first_kind!r}"
            )
        if self.token_counter not in TOKEN_COUNTERS:
            raise UsageError(
                f"--token-counter must be one of {', '.join(TOKEN_COUNTERS)}, got {self.token_counter!r}"
            )
        if self.tpm_charge not in TPM_CHARGES:
            raise UsageError(f"--tpm-charge must be one of {', '.join(TPM_CHARGES)}, got {self.tpm_charge!r}")
        if not self.track_hashes and (self.fail_first_attempts or any(rates.values())):
            raise UsageError("faults need attempt counts: leave --track-hashes on when a fault rate is set")
        if not (400 <= self.permanent_status < 500 and self.permanent_status != 429):
            raise UsageError(f"--permanent-status must be a 4xx other than 429, got {self.permanent_status}")

    def to_dict(self) -> dict[str, Any]:
        """Every knob by its field name; :meth:`from_dict` reads it back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TeacherKnobs:
        """Knobs from a dict of field names; unknown names are a :class:`UsageError`."""
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise UsageError(
                f"unknown teacher knob(s): {', '.join(sorted(unknown))}; see 'distill teacher serve -h'"
            )
        for f in dataclasses.fields(cls):
            if f.name in data and not isinstance(data[f.name], _JSON_TYPES[str(f.type)]):
                raise UsageError(
                    f"teacher knob {f.name} (--{_flag(f.name)}) must be {f.type}, got {data[f.name]!r}"
                )
        return cls(**data)

    def replace(self, **changes: Any) -> TeacherKnobs:
        """A copy with ``changes`` applied (validated)."""
        return self.from_dict({**self.to_dict(), **changes})

    def fault_rates(self) -> dict[str, float]:
        """Rate of each fault kind, in :data:`FAULT_KINDS` order."""
        return {
            "server_error": self.error_rate,
            "hang": self.hang_rate,
            "reset": self.reset_rate,
            "truncated": self.truncated_rate,
            "empty": self.empty_rate,
            "throttle": self.throttle_rate,
        }


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "str | None": (str, type(None)),
    "int": (int,),
    "float": (int, float),
    "float | None": (int, float, type(None)),
    "bool": (bool,),
}
_METAVARS = {
    "str": "TEXT",
    "str | None": "TEXT",
    "int": "N",
    "float": "X",
    "float | None": "X",
    "bool": "BOOL",
}
_FLAG_TYPES = {
    "str": str,
    "str | None": str,
    "int": int,
    "float": float,
    "float | None": float,
    "bool": _parse_bool,
}


def _json_object(source: str, text: str) -> dict[str, Any]:
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise UsageError(f"{source} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{source} must be a JSON object of knob names, e.g. '{{\"rpm\": 600}}'")
    return data


def add_knob_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--knobs-json`` and one flag per knob (``--error-rate 0.1``, ``--retry-after false``) to ``parser``."""
    group = parser.add_argument_group(
        f"teacher knobs (flags override --knobs-json, which overrides ${KNOBS_ENV})"
    )
    group.add_argument(
        "--knobs-json", metavar="JSON", help="all knobs at once, as a JSON object of field names"
    )
    for f in dataclasses.fields(TeacherKnobs):
        group.add_argument(
            f"--{_flag(f.name)}",
            dest=f"knob_{f.name}",
            type=_FLAG_TYPES[str(f.type)],
            default=None,
            metavar=_METAVARS[str(f.type)],
            help=f"{f.metadata['help']} (default: {f.default})",
        )


def knobs_from_args(args: argparse.Namespace) -> TeacherKnobs:
    """The knobs that the knob flags, ``--knobs-json`` and ``$DISTILL_TEACHER_KNOBS`` describe, in that precedence."""
    data: dict[str, Any] = {}
    for source, text in ((KNOBS_ENV, os.environ.get(KNOBS_ENV)), ("--knobs-json", args.knobs_json)):
        if text:
            data.update(_json_object(source, text))
    for f in dataclasses.fields(TeacherKnobs):
        value = getattr(args, f"knob_{f.name}")
        if value is not None:
            data[f.name] = value
    return TeacherKnobs.from_dict(data)
