"""``GET /health``: whether the server is up and taking requests (no auth)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """200 once the app has started (the model is loaded by then); 503 "draining" after a
    SIGTERM, so that a load balancer sends no more traffic while requests in flight finish."""
    if request.app.state.drain.draining:
        return JSONResponse({"status": "draining"}, status_code=503, headers={"Retry-After": "1"})
    return JSONResponse({"status": "ok"})
