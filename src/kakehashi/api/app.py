"""``create_app(settings)``: all wiring of the HTTP server, and nothing at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from kakehashi.api import admin, chat, completions, edits, embeddings, health, models, usage
from kakehashi.api.deps import RequestIdMiddleware, require_api_key
from kakehashi.api.errors import install_error_handlers
from kakehashi.api.platform_access import PlatformAccess
from kakehashi.backends.base import AnyBackend
from kakehashi.backends.embedding import LocalEmbeddingBackend
from kakehashi.backends.local import LocalBackend
from kakehashi.gateway.builtin import builtin_specs
from kakehashi.gateway.catalog import Catalog
from kakehashi.gateway.lifecycle import Clock, fixed_clock, system_clock
from kakehashi.gateway.service import GatewayService
from kakehashi.settings import Settings


def default_backends(settings: Settings) -> list[AnyBackend]:
    """The local language model, and the embedding model unless disabled or not installed."""
    backends: list[AnyBackend] = [LocalBackend.from_settings(settings)]
    embedder = LocalEmbeddingBackend.from_settings(settings)
    if embedder is not None:
        backends.append(embedder)
    return backends


def build_service(
    settings: Settings, backends: Sequence[AnyBackend], *, clock: Clock | None = None
) -> GatewayService:
    """The gateway over ``backends``: their models, the built-in migration table (unless
    disabled) and the configured ``[[models]]``, on ``clock`` (default: ``settings.now`` if
    set, else the real date)."""
    catalog = Catalog.from_backends(
        backends,
        settings.models,
        builtin=builtin_specs() if settings.builtin_catalog else (),
        tiers=settings.tiers,
    )
    if clock is None:
        clock = fixed_clock(settings.now) if settings.now is not None else system_clock
    return GatewayService(catalog, max_n=settings.max_n, clock=clock)


def create_app(
    settings: Settings,
    *,
    backend: AnyBackend | None = None,
    backends: Sequence[AnyBackend] | None = None,
    clock: Clock | None = None,
) -> FastAPI:
    """The kakehashi ASGI app.

    ``backends`` default to :func:`default_backends` (``backend`` alone replaces them with that
    one); they are started when the app starts and stopped when it stops. ``clock`` says what
    day it is for model lifecycles.
    """
    if backends is None:
        backends = [backend] if backend is not None else default_backends(settings)
    service = build_service(settings, backends, clock=clock)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()
            app.state.platform_access.close()

    app = FastAPI(
        title="kakehashi",
        summary="An OpenAI-compatible API served from local models.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.service = service
    app.state.platform_access = PlatformAccess(settings)
    install_error_handlers(app)
    app.add_middleware(RequestIdMiddleware)
    authenticated = [Depends(require_api_key)]
    # chat before completions: ".../engines/{engine:path}/completions" would also match
    # ".../engines/X/chat/completions" (with engine "X/chat").
    for module in (chat, completions, embeddings, edits, models):
        app.include_router(module.router, dependencies=authenticated)
    app.include_router(health.router)
    for module in (admin, usage):  # guarded by the admin key instead
        app.include_router(module.router)
    return app
