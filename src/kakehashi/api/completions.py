"""``POST /v1/completions`` and ``POST /v1/engines/{engine}/completions`` (openai 0.28's
``engine=``)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from kakehashi.api.answers import render
from kakehashi.api.deps import ContextDep, parse_body, service_of
from kakehashi.api.retention import keep_bodies
from kakehashi.wire.completions import CompletionRequest

router = APIRouter(tags=["completions"])


@router.post("/v1/completions")
async def create_completion(http: Request, ctx: ContextDep) -> Response:
    """Create a (legacy) completion."""
    request = await parse_body(http, CompletionRequest)
    answer = await service_of(http).completion(request, ctx)
    return await render(keep_bodies(http, ctx, "completions", request, answer))


@router.post("/v1/engines/{engine:path}/completions", include_in_schema=False)
async def create_engine_completion(engine: str, http: Request, ctx: ContextDep) -> Response:
    """The same, with the model named in the path."""
    request = await parse_body(http, CompletionRequest, model=engine)
    answer = await service_of(http).completion(request, ctx)
    return await render(keep_bodies(http, ctx, "completions", request, answer))
