"""The settings of a ``--batch`` run, and the provider they open."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distill.errors import AuthenticationError, UsageError
from distill.settings import RunSettings

from .provider import Provider

PROVIDERS = ("together", "openai")


@dataclass(slots=True)
class BatchOptions:
    """``provider``: ``together``, ``openai`` or ``auto`` (OpenAI when the base URL names openai, else
    Together); ``poll_seconds`` between status checks; ``max_requests``/``max_bytes`` per input file (default:
    the provider's limits); ``workdir`` for input and result files (default: ``CACHE.batches/``)."""

    provider: str = "auto"
    poll_seconds: float = 30.0
    max_requests: int | None = None
    max_bytes: int | None = None
    workdir: Path | None = None

    def provider_name(self, base_url: str) -> str:
        if self.provider == "auto":
            return "openai" if "openai" in base_url.lower() else "together"
        if self.provider not in PROVIDERS:
            raise UsageError(
                f"--batch takes {' or '.join(PROVIDERS)} (or nothing: chosen from --base-url), got {self.provider!r}"
            )
        return self.provider


def open_provider(options: BatchOptions, settings: RunSettings, api_key: str | None) -> Provider:
    """The Batch API client ``options`` and ``settings`` name; checks what can be checked before paying."""
    name = options.provider_name(settings.base_url)
    if options.poll_seconds <= 0:
        raise UsageError(f"--batch-poll must be positive, got {options.poll_seconds:g}")
    if not api_key:
        raise AuthenticationError(
            f"the {name} Batch API needs an API key: set TOGETHER_API_KEY, or name the variable that holds it "
            "with --api-key-env"
        )
    limits = {"max_requests": options.max_requests, "max_bytes": options.max_bytes}
    if name == "openai":
        from .openai_api import OpenAIBatches

        return OpenAIBatches(settings.base_url, api_key, timeout=settings.request_timeout, **limits)
    if settings.api != "chat":
        raise UsageError(
            "Together's Batch API takes chat requests only: use --api chat with --batch together"
        )
    from .together_api import TogetherBatches

    return TogetherBatches(settings.base_url, api_key, timeout=settings.request_timeout, **limits)
