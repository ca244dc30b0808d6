"""``POST /v1/embeddings``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from kakehashi.api.deps import CallerDep, ServiceDep, parse_body
from kakehashi.api.wire_response import json_response
from kakehashi.wire.embeddings import EmbeddingRequest

router = APIRouter(tags=["embeddings"])


@router.post("/v1/embeddings")
async def create_embeddings(http: Request, service: ServiceDep, caller: CallerDep) -> Response:
    """Embed a string, a list of strings, token ids or lists of token ids."""
    request = await parse_body(http, EmbeddingRequest)
    route = service.route(request.model, "embeddings", caller)
    return json_response(await service.embeddings(request, route), headers=route.headers)


@router.post("/v1/engines/{engine:path}/embeddings", include_in_schema=False)
async def create_engine_embeddings(
    engine: str, http: Request, service: ServiceDep, caller: CallerDep
) -> Response:
    """The same, with the model named in the path (openai 0.28's ``engine=``)."""
    request = await parse_body(http, EmbeddingRequest, model=engine)
    route = service.route(request.model, "embeddings", caller)
    return json_response(await service.embeddings(request, route), headers=route.headers)
