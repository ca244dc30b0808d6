"""Stored bodies: a chat or legacy completion's request and response are kept in the platform
database when the request says ``store: true`` or the key's policy says so (never with
``store: false``), and purged after the retention period by the platform's job."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel

from kakehashi.gateway.context import RequestContext
from kakehashi.gateway.service import Answer, StreamAnswer
from kakehashi.platform.retention import BodyStore, should_store
from kakehashi.wire.base import RequestModel

B = TypeVar("B", bound=BaseModel)


def _requested(request: RequestModel) -> bool | None:
    """The request's ``store`` flag (anything but a boolean counts as unset)."""
    value = (request.model_extra or {}).get("store")
    return value if isinstance(value, bool) else None


def keep_bodies(
    http: Request,
    ctx: RequestContext,
    endpoint: str,
    request: RequestModel,
    answer: Answer[B] | StreamAnswer[B],
) -> Answer[B] | StreamAnswer[B]:
    """``answer``, its bodies saved (a stream's chunks as they pass) when they are to be kept."""
    platform = getattr(http.app.state, "platform", None)
    if platform is None or not should_store(_requested(request), ctx.principal):
        return answer
    bodies: BodyStore = platform.bodies
    saved: dict[str, Any] = {
        "request_id": ctx.request_id,
        "key_id": ctx.principal.key_id,
        "endpoint": endpoint,
        "request": request.model_dump(mode="json", exclude_unset=True),
    }
    if isinstance(answer, Answer):
        bodies.save(**saved, response=answer.body.model_dump(mode="json", exclude_none=True))
        return answer
    return StreamAnswer(_saved_stream(answer.chunks, bodies, saved), answer.headers)


async def _saved_stream(
    chunks: AsyncIterator[B], bodies: BodyStore, saved: dict[str, Any]
) -> AsyncIterator[B]:
    """``chunks`` as they come; once the stream ends (or the client leaves), the chunks sent
    so far are saved as the response, a JSON list."""
    sent: list[dict[str, Any]] = []
    try:
        async for chunk in chunks:
            sent.append(chunk.model_dump(mode="json", exclude_none=True))
            yield chunk
    finally:
        bodies.save(**saved, response={"stream": sent})
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
