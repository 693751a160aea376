"""Together's Batch API through the ``together`` SDK (3.x).

Input lines are ``{"custom_id", "body"}``; files are uploaded with ``purpose="batch-api"`` (client-side check
off: the service validates the file while the batch is ``VALIDATING``); only ``/v1/chat/completions`` batches.
The SDK's paths carry ``/v1``, so the base URL given to it is ``--base-url`` without its ``/v1``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import together
from together import AsyncTogether

from distill.errors import MalformedResponse, UsageError
from distill.requests import TeacherRequest

from .provider import BatchState, sdk_errors

NAME = "Together"
MAX_REQUESTS = 50_000
MAX_BYTES = 100_000_000  # 100 MB a file


def sdk_base_url(base_url: str) -> str:
    """``https://api.together.xyz/v1`` -> ``https://api.together.xyz`` (the SDK adds ``/v1`` itself)."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


class TogetherBatches:
    name = "together"

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 600.0,
        max_requests: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self.base_url = sdk_base_url(base_url)
        self.max_requests = max_requests or MAX_REQUESTS
        self.max_bytes = max_bytes or MAX_BYTES
        self._client = AsyncTogether(api_key=api_key, base_url=self.base_url, timeout=timeout, max_retries=2)

    def line(self, request: TeacherRequest) -> dict[str, Any]:
        if request.api != "chat":
            raise UsageError(
                "Together's Batch API takes chat requests only: use --api chat with --batch together"
            )
        return {"custom_id": request.key, "body": request.body()}

    def _errors(self, action: str):
        return sdk_errors(together, NAME, action, self.base_url)

    async def upload(self, path: Path) -> str:
        with self._errors(f"upload the batch file {path.name}"):
            return (await self._client.files.upload(path, purpose="batch-api", check=False)).id

    async def create(self, input_file_id: str, endpoint: str) -> str:
        with self._errors(f"create a batch over {input_file_id}"):
            created = await self._client.batches.create(
                endpoint=endpoint,  # type: ignore[arg-type]
                input_file_id=input_file_id,
                completion_window="24h",
            )
        if created.job is None or not created.job.id:
            raise MalformedResponse(f"Together created a batch over {input_file_id} but sent no job id")
        return created.job.id

    async def find(self, input_file_id: str) -> str | None:
        with self._errors("list batches"):
            jobs = await self._client.batches.list()
        return next((job.id for job in jobs if job.input_file_id == input_file_id and job.id), None)

    async def retrieve(self, batch_id: str) -> BatchState:
        with self._errors(f"look up batch {batch_id}"):
            job = await self._client.batches.retrieve(batch_id)
        return BatchState(
            id=batch_id,
            status=(job.status or "validating").lower(),
            progress=job.progress,
            output_file_id=job.output_file_id or None,
            error_file_id=job.error_file_id or None,
            message=job.error or None,
        )

    async def download(self, file_id: str, destination: Path) -> None:
        with self._errors(f"download file {file_id}"), open(destination, "wb") as out:
            async with self._client.files.with_streaming_response.content(file_id) as response:
                async for chunk in response.iter_bytes():
                    out.write(chunk)

    async def close(self) -> None:
        await self._client.close()
