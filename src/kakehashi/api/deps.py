"""Per-request plumbing: the service, API-key auth, JSON bodies, request ids and timing."""

from __future__ import annotations

import hmac
import time
import uuid
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kakehashi.api.body import decode_json, require_json_media_type
from kakehashi.api.errors import invalid_request
from kakehashi.errors import AuthenticationError
from kakehashi.gateway.access import ANONYMOUS, Caller, caller_for
from kakehashi.gateway.service import GatewayService
from kakehashi.settings import KeySpec, Settings

M = TypeVar("M", bound=BaseModel)

MISSING_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)


def get_service(request: Request) -> GatewayService:
    """The app's gateway service (set up by ``create_app``)."""
    return request.app.state.service


def get_settings(request: Request) -> Settings:
    """The app's settings."""
    return request.app.state.settings


ServiceDep = Annotated[GatewayService, Depends(get_service)]


def mask_key(key: str) -> str:
    """A key as OpenAI shows it in errors: the first five and last two characters."""
    return f"{key[:5]}***{key[-2:]}" if len(key) > 8 else "***"


async def require_api_key(request: Request) -> Caller:
    """When keys are configured, demand ``Authorization: Bearer <one of them>``; the caller
    that key stands for (anonymous and unrestricted on an open server)."""
    settings = get_settings(request)
    if not settings.auth_enabled:
        return ANONYMOUS
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise AuthenticationError(MISSING_KEY_MESSAGE)
    # Compare against every key, so timing does not reveal which prefix matched.
    found: KeySpec | None = None
    for spec in settings.all_keys():
        if hmac.compare_digest(key.encode(), spec.key.encode()) and found is None:
            found = spec
    if found is None:
        raise AuthenticationError(f"Incorrect API key provided: {mask_key(key)}.")
    return caller_for(found)


CallerDep = Annotated[Caller, Depends(require_api_key)]
"""The authenticated caller (computed once per request, shared with the router's check)."""


async def parse_body(request: Request, shape: type[M], /, **defaults: Any) -> M:
    """Read the JSON body and validate it as ``shape``.

    A server with API keys reads the body whatever its Content-Type says, as OpenAI does; an
    open one wants ``application/json`` (415 otherwise), so that a web page cannot drive it
    with a cross-origin ``text/plain`` POST. ``defaults`` fill fields the body lacks (e.g.
    ``model`` from ``/engines/{engine}``).
    """
    if not get_settings(request).auth_enabled:
        require_json_media_type(request.headers.get("content-type"))
    data = decode_json(await request.body())
    if isinstance(data, dict):
        data = {**defaults, **{k: v for k, v in data.items() if v is not None or k not in defaults}}
    try:
        return shape.model_validate(data)
    except ValidationError as exc:
        raise invalid_request(exc.errors()) from None


class RequestIdMiddleware:
    """Adds ``x-request-id`` (the client's, or a new one) and ``openai-processing-ms``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        incoming = dict(scope.get("headers") or []).get(b"x-request-id")
        request_id = incoming or f"req_{uuid.uuid4().hex}".encode()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                elapsed = int((time.perf_counter() - started) * 1000)
                headers = list(message.get("headers") or [])
                headers.append((b"x-request-id", request_id))
                headers.append((b"openai-processing-ms", str(elapsed).encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
