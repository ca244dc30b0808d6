"""``POST /v1/chat/completions`` (and the ``/v1/engines/{engine}/...`` form of old SDKs)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from kakehashi.api.deps import CallerDep, ServiceDep, parse_body
from kakehashi.api.streaming import event_stream
from kakehashi.api.wire_response import json_response
from kakehashi.gateway.access import Caller
from kakehashi.gateway.service import GatewayService
from kakehashi.wire.chat import ChatCompletionRequest

router = APIRouter(tags=["chat"])


async def _chat(
    request: ChatCompletionRequest, service: GatewayService, caller: Caller
) -> Response:
    route = service.route(request.model, "chat", caller)
    if request.stream:
        return await event_stream(service.stream_chat_completion(request, route), route.headers)
    return json_response(await service.chat_completion(request, route), headers=route.headers)


@router.post("/v1/chat/completions")
async def create_chat_completion(http: Request, service: ServiceDep, caller: CallerDep) -> Response:
    """Create a chat completion."""
    return await _chat(await parse_body(http, ChatCompletionRequest), service, caller)


@router.post("/v1/engines/{engine:path}/chat/completions", include_in_schema=False)
async def create_engine_chat_completion(
    engine: str, http: Request, service: ServiceDep, caller: CallerDep
) -> Response:
    """The same, with the model named in the path."""
    body = await parse_body(http, ChatCompletionRequest, model=engine)
    return await _chat(body, service, caller)
