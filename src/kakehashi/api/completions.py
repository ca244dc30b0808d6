"""``POST /v1/completions`` and ``POST /v1/engines/{engine}/completions`` (openai 0.28's
``engine=``)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from kakehashi.api.deps import CallerDep, ServiceDep, parse_body
from kakehashi.api.streaming import event_stream
from kakehashi.api.wire_response import json_response
from kakehashi.gateway.access import Caller
from kakehashi.gateway.service import GatewayService
from kakehashi.wire.completions import CompletionRequest

router = APIRouter(tags=["completions"])


async def _complete(
    request: CompletionRequest, service: GatewayService, caller: Caller
) -> Response:
    route = service.route(request.model, "completions", caller)
    if request.stream:
        return await event_stream(service.stream_completion(request, route), route.headers)
    return json_response(await service.completion(request, route), headers=route.headers)


@router.post("/v1/completions")
async def create_completion(http: Request, service: ServiceDep, caller: CallerDep) -> Response:
    """Create a (legacy) completion."""
    return await _complete(await parse_body(http, CompletionRequest), service, caller)


@router.post("/v1/engines/{engine:path}/completions", include_in_schema=False)
async def create_engine_completion(
    engine: str, http: Request, service: ServiceDep, caller: CallerDep
) -> Response:
    """The same, with the model named in the path."""
    body = await parse_body(http, CompletionRequest, model=engine)
    return await _complete(body, service, caller)
