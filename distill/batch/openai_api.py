"""OpenAI's Batch API through the ``openai`` SDK (an optional dependency: ``pip install 'distill[batch]'``).

Input lines are ``{"custom_id", "method": "POST", "url", "body"}``; files are uploaded with ``purpose="batch"``;
chat and completions batches; 50,000 requests and 200 MB a file. The base URL is ``--base-url`` as it is
(``https://api.openai.com/v1``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.errors import UsageError
from distill.requests import TeacherRequest

from .provider import BatchState, endpoint_for, sdk_errors

NAME = "OpenAI"
MAX_REQUESTS = 50_000
MAX_BYTES = 200_000_000  # 200 MB a file


def _sdk():
    try:
        import openai
    except ImportError:
        raise UsageError(
            "--batch openai needs the openai package: pip install 'distill[batch]' (or pip install openai)"
        ) from None
    return openai


class OpenAIBatches:
    name = "openai"

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 600.0,
        max_requests: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self._sdk = _sdk()
        self.base_url = base_url.rstrip("/")
        self.max_requests = max_requests or MAX_REQUESTS
        self.max_bytes = max_bytes or MAX_BYTES
        self._client = self._sdk.AsyncOpenAI(
            api_key=api_key, base_url=self.base_url, timeout=timeout, max_retries=2
        )

    def line(self, request: TeacherRequest) -> dict[str, Any]:
        return {
            "custom_id": request.key,
            "method": "POST",
            "url": endpoint_for(request.api),
            "body": request.body(),
        }

    def _errors(self, action: str):
        return sdk_errors(self._sdk, NAME, action, self.base_url)

    async def upload(self, path: Path) -> str:
        with self._errors(f"upload the batch file {path.name}"):
            return (await self._client.files.create(file=path, purpose="batch")).id

    async def create(self, input_file_id: str, endpoint: str) -> str:
        with self._errors(f"create a batch over {input_file_id}"):
            batch = await self._client.batches.create(
                input_file_id=input_file_id,
                endpoint=endpoint,  # type: ignore[arg-type]
                completion_window="24h",
            )
        return batch.id

    async def find(self, input_file_id: str) -> str | None:
        with self._errors("list batches"):
            async for batch in self._client.batches.list(limit=100):
                if batch.input_file_id == input_file_id:
                    return batch.id
        return None

    async def retrieve(self, batch_id: str) -> BatchState:
        with self._errors(f"look up batch {batch_id}"):
            batch = await self._client.batches.retrieve(batch_id)
        counts = batch.request_counts
        progress = (
            100.0 * (counts.completed + counts.failed) / counts.total if counts and counts.total else None
        )
        errors = batch.errors.data if batch.errors and batch.errors.data else []
        return BatchState(
            id=batch_id,
            status=batch.status,
            progress=progress,
            output_file_id=batch.output_file_id or None,
            error_file_id=batch.error_file_id or None,
            message="; ".join(e.message or e.code or "" for e in errors) or None,
        )

    async def download(self, file_id: str, destination: Path) -> None:
        with self._errors(f"download file {file_id}"), open(destination, "wb") as out:
            async with self._client.files.with_streaming_response.content(file_id) as response:
                async for chunk in response.iter_bytes():
                    out.write(chunk)

    async def close(self) -> None:
        await self._client.close()
