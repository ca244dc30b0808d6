"""Server-sent events as OpenAI sends them: ``data: {json}\\n\\n`` frames, then ``data: [DONE]``."""

from __future__ import annotations

from pydantic import BaseModel

DONE = b"data: [DONE]\n\n"
"""The frame that ends every successful stream."""

MEDIA_TYPE = "text/event-stream"


def encode_event(payload: BaseModel) -> bytes:
    """One ``data:`` frame carrying ``payload`` as compact JSON."""
    return b"data: " + payload.model_dump_json().encode() + b"\n\n"
