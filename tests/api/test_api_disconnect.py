"""A client that goes away mid-stream: the generation behind the stream is aborted."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from api.helpers import chat_body
from kakehashi.api.app import create_app
from kakehashi.backends.fake import FakeBackend
from kakehashi.settings import Settings


async def _stream_then_disconnect(app: Any, body: dict[str, Any], frames: int) -> list[bytes]:
    """Drive the ASGI app directly: read ``frames`` body messages, then disconnect."""
    received: list[bytes] = []
    enough = asyncio.Event()
    sent_request = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_request
        if not sent_request:
            sent_request = True
            return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
        await enough.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            received.append(message["body"])
            if len(received) >= frames:
                enough.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
        "root_path": "",
        "state": {},
    }
    await asyncio.wait_for(app(scope, receive, send), timeout=30)
    return received


def test_disconnect_aborts_every_choice() -> None:
    backend = FakeBackend(delay=0.01)

    async def scenario() -> list[bytes]:
        app = create_app(Settings(), backend=backend)
        await backend.start()
        try:
            return await _stream_then_disconnect(app, chat_body(stream=True, n=2), frames=4)
        finally:
            await backend.stop()

    received = asyncio.run(scenario())
    assert 4 <= len(received) < 20  # the stream stopped early
    assert b"[DONE]" not in b"".join(received)
    assert backend.engine.running == set()
    assert len(backend.engine.aborted) == 2
