"""The Batch API's request body (responses are built by the platform's batch object)."""

from __future__ import annotations

from typing import Literal

from kakehashi.wire.base import RequestModel


class ExpiresAfter(RequestModel):
    """When generated files expire: ``seconds`` after their creation."""

    anchor: Literal["created_at"]
    seconds: int


class CreateBatchRequest(RequestModel):
    """``POST /v1/batches``. The values of ``endpoint`` and ``completion_window`` are checked
    by the batch service, which names what it supports."""

    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None
    output_expires_after: ExpiresAfter | None = None
