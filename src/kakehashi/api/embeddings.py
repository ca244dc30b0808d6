"""``POST /v1/embeddings``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from kakehashi.api.answers import render
from kakehashi.api.deps import ContextDep, parse_body, service_of
from kakehashi.wire.embeddings import EmbeddingRequest

router = APIRouter(tags=["embeddings"])


@router.post("/v1/embeddings")
async def create_embeddings(http: Request, ctx: ContextDep) -> Response:
    """Embed a string, a list of strings, token ids or lists of token ids."""
    request = await parse_body(http, EmbeddingRequest)
    return await render(await service_of(http).embeddings(request, ctx))


@router.post("/v1/engines/{engine:path}/embeddings", include_in_schema=False)
async def create_engine_embeddings(engine: str, http: Request, ctx: ContextDep) -> Response:
    """The same, with the model named in the path (openai 0.28's ``engine=``)."""
    request = await parse_body(http, EmbeddingRequest, model=engine)
    return await render(await service_of(http).embeddings(request, ctx))
