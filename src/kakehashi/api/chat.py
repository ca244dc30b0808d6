"""``POST /v1/chat/completions`` (and the ``/v1/engines/{engine}/...`` form of old SDKs)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from kakehashi.api.deps import ServiceDep, parse_body
from kakehashi.api.streaming import event_stream
from kakehashi.api.wire_response import json_response
from kakehashi.wire.chat import ChatCompletionRequest

router = APIRouter(tags=["chat"])


async def _chat(request: ChatCompletionRequest, service: ServiceDep) -> Response:
    if request.stream:
        return await event_stream(service.stream_chat_completion(request))
    return json_response(await service.chat_completion(request))


@router.post("/v1/chat/completions")
async def create_chat_completion(http: Request, service: ServiceDep) -> Response:
    """Create a chat completion."""
    return await _chat(await parse_body(http, ChatCompletionRequest), service)


@router.post("/v1/engines/{engine:path}/chat/completions", include_in_schema=False)
async def create_engine_chat_completion(
    engine: str, http: Request, service: ServiceDep
) -> Response:
    """The same, with the model named in the path."""
    return await _chat(await parse_body(http, ChatCompletionRequest, model=engine), service)
