"""A ``multipart/form-data`` upload read as it streams in: the one file part goes chunk by
chunk to a sink (never whole in memory), the small text fields are collected.

Starlette's form parser spools files to a temporary file of its own with no size limit; this
one hands each chunk straight to the file store, which stops the upload (413) at the limit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

from python_multipart.multipart import MultipartParser, parse_options_header

from kakehashi.errors import InvalidRequestError, RequestTooLargeError

MAX_FIELD_BYTES = 4096
MAX_FIELDS = 32


class ChunkSink(Protocol):
    """Where the file part's bytes go."""

    def write(self, chunk: bytes) -> None: ...


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a ``multipart/form-data`` content type, or a 400 naming the problem."""
    kind, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise InvalidRequestError(
            "This endpoint expects a multipart/form-data body with a 'file' part and a "
            f"'purpose' field (got Content-Type {content_type or 'none'!r}).",
            code="invalid_content_type",
        )
    return boundary


@dataclass
class FormUpload:
    """What a form held: its text fields, and the file part's name and size."""

    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    file_bytes: int = 0


async def read_form(
    body: AsyncIterator[bytes],
    content_type: str | None,
    open_sink: Callable[[], ChunkSink],
    *,
    file_field: str = "file",
) -> FormUpload:
    """Parse the form streaming from ``body``. ``open_sink`` is called when the file part
    begins; every chunk of it is written there. Text fields over 4 KiB, more than 32 fields,
    a second file, or a malformed body are 400s."""
    form = FormUpload()
    state = _PartState()
    sink: list[ChunkSink] = []

    def on_part_begin() -> None:
        state.reset()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state.header_field += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state.header_value += data[start:end]

    def on_header_end() -> None:
        if state.header_field.lower() == b"content-disposition":
            state.disposition = state.header_value
        state.header_field, state.header_value = b"", b""

    def on_headers_finished() -> None:
        _kind, options = parse_options_header(state.disposition)
        state.name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        if state.name == file_field and filename is not None:
            if sink:
                raise InvalidRequestError(
                    "Only one file may be uploaded per request.", param=file_field
                )
            form.filename = filename.decode("utf-8", "replace") or "upload"
            sink.append(open_sink())
            state.is_file = True
        elif len(form.fields) >= MAX_FIELDS:
            raise InvalidRequestError(f"Too many form fields (at most {MAX_FIELDS}).")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state.is_file:
            sink[0].write(data[start:end])
            form.file_bytes += end - start
        else:
            state.value += data[start:end]
            if len(state.value) > MAX_FIELD_BYTES:
                raise InvalidRequestError(
                    f"The form field '{state.name}' is longer than {MAX_FIELD_BYTES} bytes.",
                    param=state.name or None,
                )

    def on_part_end() -> None:
        if not state.is_file and state.name:
            form.fields[state.name] = state.value.decode("utf-8", "replace")

    parser = MultipartParser(
        boundary_of(content_type),
        {
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
        },
    )
    try:
        async for chunk in body:
            parser.write(chunk)
        parser.finalize()
    except (InvalidRequestError, RequestTooLargeError):
        raise
    except Exception as exc:  # python-multipart's parse errors
        raise InvalidRequestError(f"The multipart body could not be parsed: {exc}") from None
    return form


@dataclass
class _PartState:
    header_field: bytes = b""
    header_value: bytes = b""
    disposition: bytes = b""
    name: str = ""
    value: bytes = b""
    is_file: bool = False

    def reset(self) -> None:
        self.header_field = self.header_value = self.disposition = self.value = b""
        self.name = ""
        self.is_file = False
