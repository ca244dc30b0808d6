"""``POST /tokenize`` and ``POST /detokenize`` (also under ``/v1``), as vLLM serves them: exact
for a local model, an estimate (``"exact": false``) for one that cannot tokenize."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from kakehashi.api.deps import ContextDep, ServiceDep, parse_body
from kakehashi.api.wire_response import json_response
from kakehashi.wire.tokenize import DetokenizeRequest, TokenizeRequest

router = APIRouter(tags=["tokenize"])


@router.post("/tokenize")
@router.post("/v1/tokenize", include_in_schema=False)
async def tokenize(http: Request, service: ServiceDep, ctx: ContextDep) -> Response:
    """Count (and list) the tokens of a prompt or of chat messages."""
    request = await parse_body(http, TokenizeRequest)
    return json_response(service.tokens(request.model, ctx).tokenize(request))


@router.post("/detokenize")
@router.post("/v1/detokenize", include_in_schema=False)
async def detokenize(http: Request, service: ServiceDep, ctx: ContextDep) -> Response:
    """The text of a list of token ids."""
    request = await parse_body(http, DetokenizeRequest)
    return json_response(service.tokens(request.model, ctx).detokenize(request))
