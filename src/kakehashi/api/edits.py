"""``POST /v1/edits``: OpenAI's deprecated Edits API, answered by a chat model. Every response,
errors included, carries a ``Deprecation`` header (plus the model's own lifecycle headers)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from kakehashi.api.answers import render
from kakehashi.api.deps import ContextDep, ServiceDep, parse_body
from kakehashi.api.errors import error_response
from kakehashi.capabilities import Capability
from kakehashi.errors import KakehashiError
from kakehashi.wire.edits import EditRequest

router = APIRouter(tags=["edits"])


@router.post("/v1/edits")
async def create_edit(http: Request, service: ServiceDep, ctx: ContextDep) -> Response:
    """Edit ``input`` following ``instruction``."""
    try:
        request = await parse_body(http, EditRequest)
        return await render(await service.edit(request, ctx))
    except KakehashiError as exc:
        return error_response(exc, headers=service.endpoint_headers(Capability.EDITS))
