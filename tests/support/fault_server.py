"""A kakehashi app whose backend raises an unexpected exception on request, served over HTTP
as a real process: the server's own wiring (middleware, handlers, uvicorn) answers it.

    python tests/support/fault_server.py PORT

Chat messages whose last content is :data:`EXPLODE` make the backend raise a ``RuntimeError``
(a bug, not a typed error); everything else is the FakeBackend's echo. The server is open
(no API keys).
"""

from __future__ import annotations

import sys

from kakehashi.api.app import create_app
from kakehashi.api.server import serve
from kakehashi.backends.base import Call
from kakehashi.backends.fake import FakeBackend
from kakehashi.settings import Settings
from kakehashi.wire.chat import ChatCompletionRequest, ChatCompletionResponse

EXPLODE = "explode"


class ExplodingBackend(FakeBackend):
    """The FakeBackend, but ``chat`` of :data:`EXPLODE` raises RuntimeError."""

    async def chat(self, request: ChatCompletionRequest, call: Call) -> ChatCompletionResponse:
        if request.messages[-1].content == EXPLODE:
            raise RuntimeError("an unexpected failure, as a bug would raise")
        return await super().chat(request, call)


def main(port: int) -> None:
    app = create_app(Settings(), backend=ExplodingBackend())
    serve(app, host="127.0.0.1", port=port, log_level="info", drain_timeout=5)


if __name__ == "__main__":
    main(int(sys.argv[1]))
