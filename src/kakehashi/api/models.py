"""``GET /v1/models`` and ``GET /v1/models/{model}`` (model ids may contain ``/``): only what
the caller's key may use and what is not retired."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from kakehashi.api.deps import ContextDep, ServiceDep
from kakehashi.api.wire_response import json_response

router = APIRouter(tags=["models"])


@router.get("/v1/models")
async def list_models(service: ServiceDep, ctx: ContextDep) -> Response:
    """The models this caller may use."""
    return json_response(service.list_models(ctx))


@router.get("/v1/models/{model:path}")
async def retrieve_model(model: str, service: ServiceDep, ctx: ContextDep) -> Response:
    """One model, or 404 ``model_not_found`` (also for models the caller may not use)."""
    return json_response(service.get_model(model, ctx))
