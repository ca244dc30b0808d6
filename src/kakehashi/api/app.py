"""``create_app(settings)``: all wiring of the HTTP server, and nothing at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from kakehashi.api import chat, completions, health, models
from kakehashi.api.deps import RequestIdMiddleware, require_api_key
from kakehashi.api.errors import install_error_handlers
from kakehashi.backends.base import Backend
from kakehashi.backends.local import LocalBackend
from kakehashi.gateway.catalog import Catalog
from kakehashi.gateway.service import GatewayService
from kakehashi.settings import Settings


def create_app(settings: Settings, *, backend: Backend | None = None) -> FastAPI:
    """The kakehashi ASGI app. ``backend`` defaults to the local engine serving
    ``settings.model``; it is started when the app starts and stopped when it stops."""
    service = GatewayService(
        Catalog.from_backends([backend or LocalBackend.from_settings(settings)]),
        max_n=settings.max_n,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="kakehashi",
        summary="An OpenAI-compatible API served from local models.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.service = service
    install_error_handlers(app)
    app.add_middleware(RequestIdMiddleware)
    authenticated = [Depends(require_api_key)]
    # chat before completions: ".../engines/{engine:path}/completions" would also match
    # ".../engines/X/chat/completions" (with engine "X/chat").
    for module in (chat, completions, models):
        app.include_router(module.router, dependencies=authenticated)
    app.include_router(health.router)
    return app
