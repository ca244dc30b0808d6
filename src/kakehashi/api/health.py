"""``GET /health``: whether the server is up (no auth)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: answers once the app has started (the model is loaded by then)."""
    return {"status": "ok"}
