"""``GET /v1/models`` and ``GET /v1/models/{model}`` (model ids may contain ``/``)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from kakehashi.api.deps import ServiceDep
from kakehashi.api.wire_response import json_response

router = APIRouter(tags=["models"])


@router.get("/v1/models")
async def list_models(service: ServiceDep) -> Response:
    """The models this server offers."""
    return json_response(service.list_models())


@router.get("/v1/models/{model:path}")
async def retrieve_model(model: str, service: ServiceDep) -> Response:
    """One model, or 404 ``model_not_found``."""
    return json_response(service.get_model(model))
