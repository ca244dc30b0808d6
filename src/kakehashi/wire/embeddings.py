"""The Embeddings API: ``POST /v1/embeddings`` request and response."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field
from pydantic_core import PydanticCustomError

from kakehashi.wire.base import RequestModel, WireModel
from kakehashi.wire.common import invalid_type

MAX_INPUTS = 2048
"""Most inputs one request may carry, as OpenAI allows."""

EmbeddingInput = str | list[int]
"""One input: text, or token ids."""

_INPUT_TYPES = (
    "a string, an array of strings, an array of integers or an array of arrays of integers"
)


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _invalid(message: str, **context: Any) -> PydanticCustomError:
    return PydanticCustomError("invalid_value", "Invalid '{param}': " + message, context)


def _inputs(value: Any) -> list[EmbeddingInput]:
    """Normalize every accepted ``input`` form to a list of inputs, refusing empty ones."""
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, list) and value and all(_is_token(t) for t in value):
        items = [value]
    elif isinstance(value, list):
        items = value
    else:
        raise invalid_type(_INPUT_TYPES, value)
    if not items:
        raise PydanticCustomError(
            "too_short",
            "Invalid '{param}': empty array. Expected an array with minimum length 1, but got "
            "an empty array instead.",
            {"min_length": 1, "actual_length": 0},
        )
    if len(items) > MAX_INPUTS:
        raise PydanticCustomError(
            "too_long",
            "Invalid '{param}': array too long. Expected an array with maximum length "
            "{max_length}, but got an array with length {actual_length} instead.",
            {"max_length": MAX_INPUTS, "actual_length": len(items)},
        )
    strings = all(isinstance(item, str) for item in items)
    token_lists = all(isinstance(item, list) and all(_is_token(t) for t in item) for item in items)
    if not (strings or token_lists):
        raise invalid_type(_INPUT_TYPES, value)
    for index, item in enumerate(items):
        if not item and isinstance(value, str):
            raise _invalid("empty string. Expected a non-empty string.")
        if not item:
            what = "an empty string" if strings else "an empty array"
            raise _invalid(f"input {index} is {what}; every input must be non-empty.")
        if not strings and min(item) < 0:
            raise _invalid("input {index} has a negative token id.", index=index)
    return [item if strings else list(item) for item in items]


class EmbeddingRequest(RequestModel):
    """``POST /v1/embeddings``; ``input`` is normalized to a non-empty list of inputs."""

    model: str
    input: Annotated[list[EmbeddingInput], BeforeValidator(_inputs)]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int | None, Field(ge=1)] = None
    user: str | None = None

    @property
    def base64(self) -> bool:
        """Whether vectors are returned as base64 of little-endian float32."""
        return self.encoding_format == "base64"


class Embedding(WireModel):
    """One vector: a list of floats, or a base64 string of little-endian float32."""

    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(WireModel):
    """Token counts of an embedding request (no completion tokens)."""

    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(WireModel):
    """The body of ``POST /v1/embeddings``."""

    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
