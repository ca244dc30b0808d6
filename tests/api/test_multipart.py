"""The streaming multipart reader of the Files API: fields, a file in many chunks, bad bodies."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from kakehashi.api.multipart import MAX_FIELD_BYTES, read_form
from kakehashi.errors import InvalidRequestError, RequestTooLargeError

pytestmark = pytest.mark.anyio

BOUNDARY = "bnd42"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def body(*parts: tuple[str, bytes, str | None]) -> bytes:
    out = b""
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename is not None else ""
        )
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += value + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


async def chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


class Sink:
    def __init__(self, limit: int = 1 << 30) -> None:
        self.data = b""
        self.limit = limit

    def write(self, chunk: bytes) -> None:
        if len(self.data) + len(chunk) > self.limit:
            raise RequestTooLargeError("too large", param="file")
        self.data += chunk


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.parametrize("chunk_size", [1, 7, 65536])
async def test_fields_and_a_file_in_any_chunking(chunk_size: int) -> None:
    payload = bytes(range(256)) * 40 + b"\r\n--bnd4 not the boundary\r\n"
    sinks: list[Sink] = []

    def open_sink() -> Sink:
        sinks.append(Sink())
        return sinks[-1]

    data = body(("purpose", b"batch", None), ("file", payload, "in.jsonl"))
    form = await read_form(chunks(data, chunk_size), CONTENT_TYPE, open_sink)
    assert form.fields == {"purpose": "batch"}
    assert form.filename == "in.jsonl" and form.file_bytes == len(payload)
    assert [s.data for s in sinks] == [payload]


async def test_bad_bodies_are_400s() -> None:
    with pytest.raises(InvalidRequestError, match="multipart/form-data"):
        await read_form(chunks(b"{}", 10), "application/json", Sink)
    with pytest.raises(InvalidRequestError, match="could not be parsed"):
        await read_form(chunks(b"garbage without a boundary", 5), CONTENT_TYPE, Sink)
    long_field = body(("purpose", b"x" * (MAX_FIELD_BYTES + 1), None))
    with pytest.raises(InvalidRequestError, match="longer than"):
        await read_form(chunks(long_field, 1000), CONTENT_TYPE, Sink)
    two_files = body(("file", b"a", "a"), ("file", b"b", "b"))
    with pytest.raises(InvalidRequestError, match="Only one file"):
        await read_form(chunks(two_files, 1000), CONTENT_TYPE, Sink)


async def test_the_sink_stops_an_oversized_file() -> None:
    data = body(("file", b"x" * 5000, "big"))
    with pytest.raises(RequestTooLargeError):
        await read_form(chunks(data, 512), CONTENT_TYPE, lambda: Sink(limit=1000))
