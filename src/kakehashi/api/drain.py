"""Graceful shutdown: requests in flight are counted; on SIGTERM the server stops taking new
ones (``/health`` answers 503 "draining"), lets those in flight finish until a deadline, then
aborts the rest, whose streams end with an error frame."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Container

from starlette.types import ASGIApp, Receive, Scope, Send

from kakehashi.api.errors import error_response
from kakehashi.errors import ServiceUnavailableError

logger = logging.getLogger(__name__)

SHUTTING_DOWN_MESSAGE = (
    "The server is shutting down and takes no new requests. Please retry shortly (or on "
    "another instance)."
)
ABORT_GRACE_SECONDS = 5.0
"""How long aborted requests get to send their error frames before the server exits."""


class Drain:
    """The count of requests in flight, and whether the server is draining."""

    def __init__(self) -> None:
        self.draining = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        """Requests that have started and not yet finished their response."""
        return self._in_flight

    def enter(self) -> None:
        """A request starts."""
        self._in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        """A request has finished."""
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    async def run(self, deadline: float, abort: Callable[[], Awaitable[None]]) -> bool:
        """Refuse new requests, wait up to ``deadline`` seconds for those in flight, then
        ``abort()`` the rest and give them :data:`ABORT_GRACE_SECONDS` to end. True if every
        request finished on its own."""
        self.draining = True
        if self._in_flight:
            logger.warning(
                "draining: waiting up to %.0f s for %d request(s) in flight",
                deadline,
                self._in_flight,
            )
        try:
            await asyncio.wait_for(self._idle.wait(), deadline)
        except TimeoutError:
            logger.warning(
                "drain deadline of %.0f s passed; aborting %d request(s) still in flight",
                deadline,
                self._in_flight,
            )
            await abort()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), ABORT_GRACE_SECONDS)
            return False
        return True


class DrainMiddleware:
    """Counts requests in flight in ``drain``; while draining answers new ones with a 503
    (``Retry-After``, ``Connection: close``). Paths in ``exempt`` (``/health``) pass uncounted."""

    def __init__(self, app: ASGIApp, *, drain: Drain, exempt: Container[str] = ()) -> None:
        self.app = app
        self.drain = drain
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        if self.drain.draining:
            error = ServiceUnavailableError(SHUTTING_DOWN_MESSAGE, code="server_shutting_down")
            response = error_response(error, headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        self.drain.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.leave()
