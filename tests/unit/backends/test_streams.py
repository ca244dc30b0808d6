"""merge(): the n choices of a request, interleaved, and cancelled together."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from kakehashi.backends.streams import merge


async def _count(name: str, n: int, closed: list[str], delay: float = 0.0) -> AsyncIterator[str]:
    try:
        for i in range(n):
            await asyncio.sleep(delay)
            yield f"{name}{i}"
    finally:
        closed.append(name)


def test_merge_yields_everything_with_indexes() -> None:
    async def scenario() -> list[tuple[int, str]]:
        closed: list[str] = []
        items = [item async for item in merge([_count("a", 2, closed), _count("b", 3, closed)])]
        assert sorted(closed) == ["a", "b"]
        return items

    items = asyncio.run(scenario())
    assert sorted(items) == [(0, "a0"), (0, "a1"), (1, "b0"), (1, "b1"), (1, "b2")]
    assert [v for i, v in items if i == 1] == ["b0", "b1", "b2"]


def test_stopping_early_closes_every_stream() -> None:
    async def scenario() -> list[str]:
        closed: list[str] = []
        streams = [_count("a", 100, closed, 0.001), _count("b", 100, closed, 0.001)]
        merged = merge(streams)
        async for _ in merged:
            break
        await merged.aclose()  # type: ignore[attr-defined]
        return closed

    assert sorted(asyncio.run(scenario())) == ["a", "b"]


def test_an_error_in_one_stream_is_raised_and_stops_the_others() -> None:
    async def failing() -> AsyncIterator[str]:
        yield "x"
        raise ValueError("broken")

    async def scenario() -> list[str]:
        closed: list[str] = []
        with pytest.raises(ValueError, match="broken"):
            async for _ in merge([failing(), _count("slow", 1000, closed, 0.001)]):
                pass
        return closed

    assert asyncio.run(scenario()) == ["slow"]
