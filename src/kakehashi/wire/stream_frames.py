"""SSE frames of one streamed chat completion, written without pydantic's round trip.

A token's chunk is the hottest object on the wire: at 32 streams the server writes about a
thousand a second. Serializing one through pydantic (the :class:`~kakehashi.wire.base.WireModel`
rule that drops unset nulls runs in Python at every level) costs tens of microseconds. Almost
every chunk has the same shape: one choice, a ``content`` or ``role`` delta, no logprobs. Those
are written here from a prefix cached per stream; anything else goes through
:func:`~kakehashi.wire.sse.encode_event`. Both give the same bytes (a test compares them).
"""

from __future__ import annotations

from json.encoder import encode_basestring

from pydantic import BaseModel

from kakehashi.wire.chat import ChatChunkChoice, ChatCompletionChunk, ChatDelta
from kakehashi.wire.sse import encode_event


class StreamFrames:
    """Encodes the chunks of one stream as ``data:`` frames."""

    def __init__(self) -> None:
        self._key: tuple[str, int, str] | None = None
        self._prefix = b""

    def frame(self, chunk: BaseModel) -> bytes:
        """``chunk`` as one frame, byte for byte what :func:`encode_event` writes."""
        if type(chunk) is ChatCompletionChunk:
            try:
                body = self._chat(chunk)
            except UnicodeEncodeError:  # a lone surrogate: pydantic's own rules apply
                body = None
            if body is not None:
                return body
        return encode_event(chunk)

    def _chat(self, chunk: ChatCompletionChunk) -> bytes | None:
        if chunk.__pydantic_extra__ or chunk.usage is not None or len(chunk.choices) != 1:
            return None
        choice = _choice(chunk.choices[0])
        if choice is None:
            return None
        key = (chunk.id, chunk.created, chunk.model)
        if key != self._key:
            self._key = key
            self._prefix = (
                f'data: {{"id":{encode_basestring(chunk.id)},"object":"chat.completion.chunk",'
                f'"created":{chunk.created},"model":{encode_basestring(chunk.model)},"choices":['
            ).encode()
        fields_set = chunk.model_fields_set
        tail = ""
        fingerprint = chunk.system_fingerprint
        if fingerprint is not None:
            tail += f',"system_fingerprint":{encode_basestring(fingerprint)}'
        elif "system_fingerprint" in fields_set:
            tail += ',"system_fingerprint":null'
        if "usage" in fields_set:
            tail += ',"usage":null'
        return self._prefix + (choice + "]" + tail + "}\n\n").encode()


def _choice(choice: ChatChunkChoice) -> str | None:
    """One choice's JSON, or None if it is not of the plain shape written here."""
    delta = choice.delta
    if (
        type(choice) is not ChatChunkChoice
        or type(delta) is not ChatDelta
        or choice.__pydantic_extra__
        or delta.__pydantic_extra__
        or choice.logprobs is not None
    ):
        return None
    parts = []
    delta_set = delta.model_fields_set
    for name, value in (("role", delta.role), ("content", delta.content)):
        if value is not None:
            parts.append(f'"{name}":{encode_basestring(value)}')
        elif name in delta_set:
            parts.append(f'"{name}":null')
    finish = "null" if choice.finish_reason is None else f'"{choice.finish_reason}"'
    return (
        f'{{"index":{choice.index},"delta":{{{",".join(parts)}}},'
        f'"logprobs":null,"finish_reason":{finish}}}'
    )
