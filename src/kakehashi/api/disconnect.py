"""Stop working for clients that left: a request whose client disconnects is cancelled, before
its response starts or while it streams, which aborts the generation (or the upstream request)
behind it.

Without this a client that times out and retries, as the OpenAI SDKs do, leaves its first
request generating to the end on the engine, so every retry adds load to an overloaded server.
Streamed responses rely on it (:class:`~kakehashi.api.streaming.EventStreamResponse` runs no
listener of its own).
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class CancelOnDisconnectMiddleware:
    """Watches the connection once the request body is read; a disconnect before the response
    is fully sent cancels the handler (the app's own reads see it as usual too). Once the
    response is sent, the server's "disconnect" only says the exchange is over: nothing is
    cancelled."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body_read = asyncio.Event()
        gone = asyncio.Event()
        sent = False

        async def app_receive() -> Message:
            if body_read.is_set():  # from now on the watcher reads the connection
                await gone.wait()
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
            elif not message.get("more_body", False):
                body_read.set()
            return message

        async def app_send(message: Message) -> None:
            nonlocal sent
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                sent = True
            await send(message)

        handler = asyncio.current_task()
        assert handler is not None

        async def watch() -> None:
            await body_read.wait()
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone.set()
                    if not sent:
                        handler.cancel()
                    return

        watcher = asyncio.create_task(watch())
        try:
            await self.app(scope, app_receive, app_send)
        except asyncio.CancelledError:
            if not gone.is_set() or sent:
                raise
            # The client left: nothing more to send, nobody to tell.
            handler.uncancel()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
