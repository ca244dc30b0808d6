"""Server-sent event responses for streamed completions."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping

from pydantic import BaseModel
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from kakehashi.api.errors import INTERNAL_ERROR_MESSAGE
from kakehashi.errors import KakehashiError, ServerError
from kakehashi.wire.errors import ErrorDetail, ErrorResponse
from kakehashi.wire.sse import DONE, MEDIA_TYPE, encode_event
from kakehashi.wire.stream_frames import StreamFrames

logger = logging.getLogger(__name__)


def _error_frame(error: KakehashiError) -> bytes:
    detail = ErrorDetail(
        message=error.message, type=error.error_type, param=error.param, code=error.code
    )
    return encode_event(ErrorResponse(error=detail))


class EventStreamResponse(StreamingResponse):
    """A streaming response without a task of its own listening for the client to leave:
    :class:`~kakehashi.api.disconnect.CancelOnDisconnectMiddleware` already cancels the request
    when it does (starlette's listener cost about 0.1 ms a stream)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.stream_response(send)


async def event_stream(
    chunks: AsyncIterator[BaseModel], headers: Mapping[str, str] | None = None
) -> StreamingResponse:
    """An SSE response of ``chunks`` then ``[DONE]`` (with extra ``headers``).

    The first chunk is awaited before the response starts, so a request the backend rejects
    gets an ordinary error response. A failure later becomes an ``error`` frame that ends the
    stream. When the client goes away the iteration is cancelled and ``chunks`` closed, which
    aborts the generation behind it.
    """
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        first = None
    except BaseException:
        await chunks.aclose()  # type: ignore[attr-defined]
        raise

    async def frames() -> AsyncIterator[bytes]:
        encoder = StreamFrames()
        async with contextlib.aclosing(chunks):  # type: ignore[type-var]
            try:
                if first is not None:
                    yield encoder.frame(first)
                async for chunk in chunks:
                    yield encoder.frame(chunk)
            except KakehashiError as exc:
                # A shutdown aborts every stream at once; the drain logs that once, not here.
                level = logging.DEBUG if exc.status_code == 503 else logging.WARNING
                logger.log(level, "stream failed: %s", exc.message)
                yield _error_frame(exc)
                return
            except Exception:
                logger.exception("stream failed unexpectedly")
                yield _error_frame(ServerError(INTERNAL_ERROR_MESSAGE))
                return
        yield DONE

    return EventStreamResponse(
        frames(),
        media_type=MEDIA_TYPE,
        headers={**(headers or {}), "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
