"""The OpenAI error envelope ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from typing import Annotated

from kakehashi.wire.base import KEEP_NULL, WireModel


class ErrorDetail(WireModel):
    """What went wrong; ``param`` and ``code`` are always present, possibly null."""

    message: str
    type: str
    param: Annotated[str | None, KEEP_NULL] = None
    code: Annotated[str | None, KEEP_NULL] = None


class ErrorResponse(WireModel):
    """The body of every error response, and of an error frame in a stream."""

    error: ErrorDetail
