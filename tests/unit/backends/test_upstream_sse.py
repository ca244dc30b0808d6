"""Reading an upstream's server-sent events from a body that arrives in pieces of any size."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from kakehashi.backends.upstream import _sse_data

BODY = (
    b'data: {"a":1}\n\n'
    b": a comment\n"
    b'data: {"b":\r\n'
    b"data: 2}\r\n\r\n"
    b"event: ignored\n"
    b'data:{"c":3}\n\n'
    b"data: [DONE]\n\n"
)
EXPECTED = [b'{"a":1}', b'{"b":\n2}', b'{"c":3}', b"[DONE]"]


async def _events(pieces: list[bytes]) -> list[bytes]:
    async def chunks() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    return [data async for data in _sse_data(chunks())]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16, len(BODY)])
def test_events_survive_any_split_of_the_body(size: int) -> None:
    pieces = [BODY[i : i + size] for i in range(0, len(BODY), size)]
    assert asyncio.run(_events(pieces)) == EXPECTED


def test_a_last_event_without_its_blank_line_still_counts() -> None:
    assert asyncio.run(_events([b'data: {"a":1}\n\ndata: {"z":0}'])) == [b'{"a":1}', b'{"z":0}']


def test_an_event_far_larger_than_one_read_arrives_whole() -> None:
    big = b'{"text":"' + b"x" * 300_000 + b'"}'
    body = b"data: " + big + b"\n\n"
    pieces = [body[i : i + 65_536] for i in range(0, len(body), 65_536)]
    assert asyncio.run(_events(pieces)) == [big]
