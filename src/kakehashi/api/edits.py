"""``POST /v1/edits``: OpenAI's deprecated Edits API, answered by a chat model. Every response,
errors included, carries a ``Deprecation`` header (plus the model's own lifecycle headers)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from kakehashi.api.deps import CallerDep, ServiceDep, parse_body
from kakehashi.api.errors import error_response
from kakehashi.api.wire_response import json_response
from kakehashi.errors import KakehashiError
from kakehashi.wire.edits import EditRequest

router = APIRouter(tags=["edits"])


@router.post("/v1/edits")
async def create_edit(http: Request, service: ServiceDep, caller: CallerDep) -> Response:
    """Edit ``input`` following ``instruction``."""
    try:
        request = await parse_body(http, EditRequest)
        route = service.route(request.model, "edits", caller)
        return json_response(await service.edit(request, route), headers=route.headers)
    except KakehashiError as exc:
        return error_response(exc, headers=service.endpoint_headers("edits"))
