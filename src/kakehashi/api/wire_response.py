"""JSON responses of wire models, serialized the way OpenAI omits optional nulls."""

from __future__ import annotations

from pydantic import BaseModel
from starlette.responses import Response


def json_response(body: BaseModel, status_code: int = 200) -> Response:
    """``body`` as an ``application/json`` response."""
    return Response(body.model_dump_json(), status_code=status_code, media_type="application/json")
