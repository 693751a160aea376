"""What a run asks of the teacher, and how hard it may push: the typed settings behind ``distill run``."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from .requests import ApiKind, canonical_json, sampling_params

History = Literal["teacher", "original"]


@dataclass(slots=True)
class Sampling:
    """Sampling parameters passed through to the teacher; None leaves a parameter to the server."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    stop: list[str] | None = None
    seed: int | None = None

    def params(self, extra_stop: tuple[str, ...] = ()) -> tuple[tuple[str, Any], ...]:
        values = asdict(self)
        if extra_stop:
            values["stop"] = list(dict.fromkeys([*(self.stop or []), *extra_stop]))
        return sampling_params(**values)


@dataclass(slots=True)
class RunSettings:
    """Everything that decides which requests a run sends (``request_identity``) and how it sends them."""

    model: str
    base_url: str
    api: ApiKind = "chat"
    history: History = "teacher"
    sampling: Sampling = field(default_factory=Sampling)
    system_prompt: str | None = None
    concurrency: int = 64
    rpm: float | None = None
    tpm: float | None = None
    request_timeout: float = 600.0
    attempts: int = 6
    retry_failed: bool = False
    estimated_output_tokens: int = 512

    def request_identity(self) -> dict[str, Any]:
        """The settings that shape each request: a run over the same input with these is the same run."""
        return {
            "model": self.model,
            "api": self.api,
            "history": self.history,
            "sampling": asdict(self.sampling),
            "system_prompt": self.system_prompt,
        }

    def run_id(self, input_path: str) -> str:
        ident = {"input": input_path, **self.request_identity()}
        return hashlib.sha256(canonical_json(ident)).hexdigest()[:16]
