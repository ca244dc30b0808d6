"""ASGI middleware that refuses a request before any route reads it: bodies over the size
limit, and (on a server without API keys) ``Host`` names a web page could have made up."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kakehashi.api.errors import error_response
from kakehashi.errors import InvalidRequestError, RequestTooLargeError


def _too_large(limit: int) -> RequestTooLargeError:
    return RequestTooLargeError(
        f"Request body too large: this server accepts bodies of at most {limit} bytes "
        "(--max-body-size, KAKEHASHI_MAX_BODY_SIZE)."
    )


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers") or ():
        if key == name:
            return value
    return None


class BodyLimitMiddleware:
    """413 for a body over ``limit`` bytes: at once when ``Content-Length`` says so, else as
    soon as the bytes read pass it. Nothing over the limit is ever held in memory; the server
    discards the rest of the body and keeps the connection. Paths in ``exempt`` (file uploads,
    which stream to disk under a limit of their own) pass unchecked."""

    def __init__(self, app: ASGIApp, *, limit: int, exempt: Iterable[str] = ()) -> None:
        self.app = app
        self.limit = limit
        self.exempt = frozenset(exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await error_response(_too_large(self.limit))(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _too_large(self.limit)
            return message

        await self.app(scope, limited_receive, send)


def host_name(host: str) -> str:
    """The name part of a ``Host`` value: no port, no IPv6 brackets, lower case."""
    if host.startswith("["):
        name = host[1 : host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:
        name = host.partition(":")[0]
    else:
        name = host
    return name.lower().rstrip(".")


def is_loopback_name(name: str) -> bool:
    """``localhost`` (and its subdomains), 127.0.0.0/8 and ::1."""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class HostGuardMiddleware:
    """Answers only requests addressed to a loopback name or one of ``allowed`` (``*`` for
    any, ``*.example.com`` for its subdomains): a DNS-rebinding page names its own host.

    Only while ``active()`` says so: an open server; once keys are required (the settings'
    or the platform's, which may be created while the server runs), any host is answered.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed: Iterable[str] = (),
        active: Callable[[], bool] = lambda: True,
    ) -> None:
        self.app = app
        self.active = active
        self.allowed = frozenset(host_name(name) for name in allowed)
        self.allow_any = "*" in self.allowed
        self.suffixes = tuple(name[1:] for name in self.allowed if name.startswith("*."))

    def accepts(self, host: str) -> bool:
        """Whether a request with this ``Host`` value is answered."""
        name = host_name(host)
        return (
            self.allow_any
            or is_loopback_name(name)
            or name in self.allowed
            or (bool(self.suffixes) and name.endswith(self.suffixes))
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = _header(scope, b"host")
        host = raw.decode("latin-1") if raw is not None else None
        if host is None or not self.active() or self.accepts(host):
            await self.app(scope, receive, send)
            return
        shown = host if len(host) <= 100 else host[:100] + "..."
        error = InvalidRequestError(
            f"Invalid Host header '{shown}': this server has no API keys, so it answers only "
            "requests addressed to a loopback name (localhost, 127.0.0.1, [::1]). To serve "
            "other names, list them with --allowed-host (KAKEHASHI_ALLOWED_HOSTS), or "
            "configure API keys.",
            code="invalid_host",
        )
        await error_response(error)(scope, receive, send)
