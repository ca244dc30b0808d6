"""Running several async iterators at once (the ``n`` choices of one request)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Protocol, TypeVar

T = TypeVar("T")

_END = object()


class Closable(Protocol):
    """Anything with an async ``aclose`` (async generators, engine streams)."""

    async def aclose(self) -> None: ...


C = TypeVar("C", bound=Closable)


async def close_all(streams: Sequence[Closable]) -> None:
    """Close every stream (closing one that has ended does nothing)."""
    for stream in streams:
        await stream.aclose()


@contextlib.asynccontextmanager
async def closing_all(streams: list[C]) -> AsyncIterator[list[C]]:
    """``streams``, closed on leaving the block however it is left, even if nobody started
    reading them (closing an async generator that never ran would not reach its cleanup)."""
    try:
        yield streams
    finally:
        await close_all(streams)


async def merge(streams: Sequence[AsyncIterator[T]]) -> AsyncGenerator[tuple[int, T], None]:
    """Yield ``(stream index, item)`` from all ``streams`` as items arrive.

    The first exception of any stream is raised here. When the consumer stops early (or is
    cancelled), every stream is cancelled and closed, so the work behind it stops.
    """
    if len(streams) == 1:
        async with contextlib.aclosing(streams[0]) as only:  # type: ignore[type-var]
            async for item in only:
                yield 0, item
        return

    queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[T]) -> None:
        try:
            async with contextlib.aclosing(stream):  # type: ignore[type-var]
                async for item in stream:
                    queue.put_nowait((index, item))
        except Exception as exc:
            queue.put_nowait((index, exc))
        else:
            queue.put_nowait((index, _END))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, got = await queue.get()
            if got is _END:
                remaining -= 1
            elif isinstance(got, Exception):
                raise got
            else:
                yield index, got  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
