"""Per-request plumbing: the service, the request context (API-key auth, request id,
deadline), JSON bodies, request ids and timing."""

from __future__ import annotations

import math
import secrets
import time
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kakehashi.api.body import decode_json, require_json_media_type
from kakehashi.api.errors import invalid_request
from kakehashi.errors import AuthenticationError
from kakehashi.gateway.context import OPEN_ACCESS, KeyStore, RequestContext
from kakehashi.gateway.service import GatewayService
from kakehashi.settings import Settings

M = TypeVar("M", bound=BaseModel)

MISSING_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)


async def get_service(request: Request) -> GatewayService:
    """The app's gateway service (set up by ``create_app``). A coroutine, so that FastAPI
    calls it on the event loop instead of handing it to a worker thread on every request."""
    return request.app.state.service


def get_settings(request: Request) -> Settings:
    """The app's settings."""
    return request.app.state.settings


def service_of(request: Request) -> GatewayService:
    """The app's gateway service, read straight from the app: the routes on the gateway's hot
    path (chat, completions, embeddings) use this rather than :data:`ServiceDep`, since each
    FastAPI dependency costs about 35 us a request to resolve."""
    service: GatewayService = request.app.state.service
    return service


ServiceDep = Annotated[GatewayService, Depends(get_service)]


def mask_key(key: str) -> str:
    """A key as OpenAI shows it in errors: the first five and last two characters."""
    return f"{key[:5]}***{key[-2:]}" if len(key) > 8 else "***"


def get_key_store(request: Request) -> KeyStore:
    """The app's key store."""
    return request.app.state.key_store


def _deadline(request: Request, limit: float) -> float:
    """When the request should be given up: the server's limit, or sooner if the client says
    it waits less (the official SDKs send their timeout as ``X-Stainless-Timeout``)."""
    seconds = limit
    given = request.headers.get("x-stainless-timeout")
    if given:
        try:
            client_timeout = float(given)
        except ValueError:
            client_timeout = math.nan
        if math.isfinite(client_timeout) and client_timeout > 0:
            seconds = min(seconds, client_timeout)
    return time.monotonic() + seconds


async def request_context(request: Request) -> RequestContext:
    """Who is calling, the request id and the deadline. When the key store requires keys,
    demand ``Authorization: Bearer <a key it knows>``. An open server serves everyone, as
    :data:`OPEN_ACCESS` unless they present a key it knows (whose limits and ledger then
    apply: a key made moments ago counts before the server notices it is no longer open)."""
    store = get_key_store(request)
    required = store.auth_required
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    key = key.strip()
    presented = scheme.lower() == "bearer" and bool(key)
    if required and not presented:
        raise AuthenticationError(MISSING_KEY_MESSAGE)
    found = await store.authenticate(key) if presented else None
    if required and found is None:
        raise AuthenticationError(f"Incorrect API key provided: {mask_key(key)}.")
    principal = found or OPEN_ACCESS
    request_id = getattr(request.state, "request_id", None) or f"req_{secrets.token_hex(16)}"
    limit = get_settings(request).gateway.request_timeout
    return RequestContext(principal, request_id, deadline=_deadline(request, limit))


ContextDep = Annotated[RequestContext, Depends(request_context)]
"""The request's context (computed once per request, shared with the router's auth check)."""


async def parse_body(request: Request, shape: type[M], /, **defaults: Any) -> M:
    """Read the JSON body and validate it as ``shape``.

    A server with API keys reads the body whatever its Content-Type says, as OpenAI does; an
    open one wants ``application/json`` (415 otherwise), so that a web page cannot drive it
    with a cross-origin ``text/plain`` POST. ``defaults`` fill fields the body lacks (e.g.
    ``model`` from ``/engines/{engine}``).
    """
    if not get_key_store(request).auth_required:
        require_json_media_type(request.headers.get("content-type"))
    data = decode_json(await request.body())
    if isinstance(data, dict):
        data = {**defaults, **{k: v for k, v in data.items() if v is not None or k not in defaults}}
    try:
        return shape.model_validate(data)
    except ValidationError as exc:
        raise invalid_request(exc.errors()) from None


MAX_CLIENT_REQUEST_ID = 512
"""Longer ``X-Client-Request-Id`` values are not echoed (OpenAI's limit)."""


class RequestIdMiddleware:
    """Adds ``x-request-id`` and ``openai-processing-ms``, and echoes the client's own
    ``X-Client-Request-Id``, as OpenAI does.

    The request id is always minted here, never taken from the client: the usage ledger keys
    its rows by it, so a client reusing an id must not merge two requests' usage.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        client_id = dict(scope.get("headers") or []).get(b"x-client-request-id")
        if client_id is not None and len(client_id) > MAX_CLIENT_REQUEST_ID:
            client_id = None
        request_id = f"req_{secrets.token_hex(16)}"
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                elapsed = int((time.perf_counter() - started) * 1000)
                headers = list(message.get("headers") or [])
                headers.append((b"x-request-id", request_id.encode()))
                headers.append((b"openai-processing-ms", str(elapsed).encode()))
                if client_id is not None:
                    headers.append((b"x-client-request-id", client_id))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
