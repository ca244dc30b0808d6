"""The gateway's answers as HTTP responses: JSON, or server-sent events."""

from __future__ import annotations

from pydantic import BaseModel
from starlette.responses import Response

from kakehashi.api.streaming import event_stream
from kakehashi.api.wire_response import json_response
from kakehashi.gateway.service import Answer, StreamAnswer


async def render(answer: Answer[BaseModel] | StreamAnswer[BaseModel]) -> Response:
    """``answer`` with its headers: a JSON body, or an SSE stream of its chunks."""
    if isinstance(answer, StreamAnswer):
        return await event_stream(answer.chunks, answer.headers)
    return json_response(answer.body, headers=answer.headers)
