"""``POST /v1/chat/completions`` (and the ``/v1/engines/{engine}/...`` form of old SDKs)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from kakehashi.api.answers import render
from kakehashi.api.deps import ContextDep, parse_body, service_of
from kakehashi.api.retention import keep_bodies
from kakehashi.wire.chat import ChatCompletionRequest

router = APIRouter(tags=["chat"])


@router.post("/v1/chat/completions")
async def create_chat_completion(http: Request, ctx: ContextDep) -> Response:
    """Create a chat completion."""
    request = await parse_body(http, ChatCompletionRequest)
    answer = await service_of(http).chat(request, ctx)
    return await render(keep_bodies(http, ctx, "chat", request, answer))


@router.post("/v1/engines/{engine:path}/chat/completions", include_in_schema=False)
async def create_engine_chat_completion(engine: str, http: Request, ctx: ContextDep) -> Response:
    """The same, with the model named in the path."""
    request = await parse_body(http, ChatCompletionRequest, model=engine)
    answer = await service_of(http).chat(request, ctx)
    return await render(keep_bodies(http, ctx, "chat", request, answer))
