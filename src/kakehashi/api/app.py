"""``create_app(settings)``: all wiring of the HTTP server, and nothing at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI
from starlette.middleware.cors import CORSMiddleware

from kakehashi.api import (
    admin,
    chat,
    completions,
    edits,
    embeddings,
    files,
    health,
    models,
    tokenize,
)
from kakehashi.api import usage as organization_usage
from kakehashi.api.batch_wiring import install_batches
from kakehashi.api.deps import RequestIdMiddleware, request_context
from kakehashi.api.disconnect import CancelOnDisconnectMiddleware
from kakehashi.api.drain import Drain, DrainMiddleware
from kakehashi.api.errors import UnhandledErrorMiddleware, install_error_handlers
from kakehashi.api.guards import BodyLimitMiddleware, HostGuardMiddleware
from kakehashi.api.platform_access import PlatformAccess
from kakehashi.backends.base import Backend
from kakehashi.backends.embedding import LocalEmbeddingBackend
from kakehashi.backends.local import LocalBackend
from kakehashi.backends.upstream import configured_upstreams, upstream_backends
from kakehashi.gateway.access import settings_key_store
from kakehashi.gateway.builtin import builtin_specs, openai_name_specs
from kakehashi.gateway.catalog import Catalog, UpstreamRoutes
from kakehashi.gateway.context import KeyStore, Limiter, UsageSink
from kakehashi.gateway.fallback import RetryPolicy
from kakehashi.gateway.lifecycle import Clock, fixed_clock, system_clock
from kakehashi.gateway.routing import Router
from kakehashi.gateway.service import GatewayService
from kakehashi.gateway.usage import JsonlUsageSink, TeeUsageSink
from kakehashi.platform.batches.usage import BatchUsageTap
from kakehashi.platform.runtime import Platform
from kakehashi.settings import Settings

if TYPE_CHECKING:
    from kakehashi.engine.models.checkpoint import Checkpoint


def default_backends(settings: Settings, checkpoint: Checkpoint | None = None) -> list[Backend]:
    """The local language model (unless disabled; from ``checkpoint`` if its files are
    already open), and the embedding model unless disabled or not installed."""
    backends: list[Backend] = []
    if settings.local_model:
        backends.append(LocalBackend.from_settings(settings, checkpoint))
    embedder = LocalEmbeddingBackend.from_settings(settings)
    if embedder is not None:
        backends.append(embedder)
    return backends


def build_service(
    settings: Settings,
    backends: Sequence[Backend],
    *,
    upstreams: Sequence[UpstreamRoutes] = (),
    clock: Clock | None = None,
    limiter: Limiter | None = None,
    usage: UsageSink | None = None,
) -> GatewayService:
    """The gateway over ``backends`` and ``upstreams``: their models, the built-in catalog
    (the migration table and OpenAI's model names; unless disabled) and the configured
    ``[[models]]``, on ``clock`` (default: ``settings.now`` if set, else the real date), with
    the ``[gateway]`` settings' retries and circuit breakers."""
    builtin = [*builtin_specs(), *openai_name_specs(settings.models)]
    catalog = Catalog.from_backends(
        backends,
        settings.models,
        builtin=builtin if settings.builtin_catalog else (),
        upstreams=upstreams,
        tiers=settings.tiers,
    )
    if clock is None:
        clock = fixed_clock(settings.now) if settings.now is not None else system_clock
    policy = settings.gateway
    return GatewayService(
        catalog,
        max_n=settings.max_n,
        clock=clock,
        limiter=limiter,
        usage=usage,
        router=Router(failures=policy.breaker_failures, cooldown=policy.breaker_cooldown),
        retry=RetryPolicy(
            max_retries=policy.max_retries,
            backoff=policy.retry_backoff,
            backoff_max=policy.retry_backoff_max,
            max_retry_after=policy.max_retry_after,
        ),
    )


def install_middleware(
    app: FastAPI, settings: Settings, key_store: KeyStore, *, files_api: bool = False
) -> None:
    """The middleware every request passes, outermost first: request ids and timing; the one
    handler of unexpected errors; CORS (only with ``cors_origins``); the drain; the ``Host``
    check (only without API keys); the body size limit (except for uploads to the Files API,
    with ``files_api``, which have their own); cancelling requests whose client left before
    their answer."""
    # add_middleware puts each one outside those added before it.
    app.add_middleware(CancelOnDisconnectMiddleware)
    app.add_middleware(
        BodyLimitMiddleware,
        limit=int(settings.max_body_size),
        exempt={files.UPLOAD_PATH} if files_api else (),
    )
    app.add_middleware(
        HostGuardMiddleware,
        allowed=settings.allowed_hosts,
        active=lambda: not key_store.auth_required,
    )
    app.add_middleware(DrainMiddleware, drain=app.state.drain, exempt={"/health"})
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=[
                "x-request-id",
                "x-client-request-id",
                "openai-processing-ms",
                "Retry-After",
                "retry-after-ms",
                *(
                    f"x-ratelimit-{what}-{unit}"
                    for what in ("limit", "remaining", "reset")
                    for unit in ("requests", "tokens")
                ),
            ],
            max_age=600,
        )
    app.add_middleware(UnhandledErrorMiddleware)
    app.add_middleware(RequestIdMiddleware)


def create_app(
    settings: Settings,
    *,
    backend: Backend | None = None,
    backends: Sequence[Backend] | None = None,
    upstreams: Sequence[UpstreamRoutes] | None = None,
    clock: Clock | None = None,
    platform: Platform | None = None,
    key_store: KeyStore | None = None,
    limiter: Limiter | None = None,
    usage: UsageSink | None = None,
) -> FastAPI:
    """The kakehashi ASGI app.

    ``backends`` default to :func:`default_backends` (``backend`` alone replaces them with that
    one); ``upstreams`` default to the ``[[upstreams]]`` (and OpenAI for its ids when
    ``OPENAI_API_KEY`` is set). They are started when the app starts and stopped when it stops.
    ``clock`` says what day it is for model lifecycles.

    ``platform`` (default: opened from the settings unless ``settings.platform`` is off) gives
    the gateway its seams: the key store, the limiter and the usage ledger. ``key_store``,
    ``limiter`` and ``usage`` replace its parts (without a platform: the settings' keys, no
    limits, and the ``usage_log`` file if set, else memory). With a platform the app also serves
    the Files and Batches APIs and runs batches through its own gateway.
    """
    if backends is None:
        backends = [backend] if backend is not None else default_backends(settings)
    if upstreams is None:
        specs = configured_upstreams(
            settings.upstreams, passthrough=settings.gateway.openai_passthrough
        )
        upstreams = upstream_backends(specs)
    if platform is None and settings.platform:
        platform = Platform.open(settings)
    if platform is not None:
        key_store = key_store or platform.key_store
        limiter = limiter or platform.limiter
        usage = usage or platform.ledger
    key_store = key_store or settings_key_store(settings)
    # With a platform, batch lines' records are taken aside to be billed with their results.
    tap = BatchUsageTap(usage) if platform is not None and usage is not None else None
    usage = tap or usage
    usage_log = JsonlUsageSink(settings.usage_log) if settings.usage_log else None
    if usage_log is not None:
        usage = TeeUsageSink([usage, usage_log]) if usage is not None else usage_log
    service = build_service(
        settings, backends, upstreams=upstreams, clock=clock, limiter=limiter, usage=usage
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if platform is not None:
            await platform.start()
        try:
            await service.start()
            try:
                if batches is not None:
                    await batches.start()
                try:
                    yield
                finally:
                    if batches is not None:
                        await batches.stop()
            finally:
                await service.stop()
        finally:
            # After the backends: the ledger writes the records of the last requests.
            if platform is not None:
                await platform.stop()
            if usage_log is not None:
                usage_log.close()
            app.state.platform_access.close()

    # The API description is public only on an open server: no /docs, /redoc, /openapi.json
    # once keys are required.
    docs = not key_store.auth_required
    app = FastAPI(
        title="kakehashi",
        summary="An OpenAI-compatible API served from local models.",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.settings = settings
    app.state.service = service
    app.state.key_store = key_store
    app.state.platform = platform
    app.state.drain = Drain()
    access = PlatformAccess(settings, platform.db if platform is not None else None)
    if platform is not None:
        access.on_key_changed = platform.key_store.forget
    app.state.platform_access = access
    install_error_handlers(app)
    install_middleware(app, settings, key_store, files_api=tap is not None)
    authenticated = [Depends(request_context)]
    # chat before completions: ".../engines/{engine:path}/completions" would also match
    # ".../engines/X/chat/completions" (with engine "X/chat").
    for module in (chat, completions, embeddings, edits, models, tokenize):
        app.include_router(module.router, dependencies=authenticated)
    app.include_router(health.router)
    batches = None
    if platform is not None and tap is not None:  # the Files and Batches APIs
        batches = install_batches(app, platform, service, tap)
    for module in (admin, organization_usage):  # guarded by the admin key instead
        app.include_router(module.router)
    return app
