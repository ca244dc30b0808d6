"""Shapes and field types shared by the Chat Completions and Completions APIs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, ValidationInfo
from pydantic_core import PydanticCustomError

from kakehashi.wire.base import RequestModel, WireModel

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]

MAX_STOP_SEQUENCES = 4
LOGIT_BIAS_LIMIT = 100


def describe_json_type(value: Any) -> str:
    """How OpenAI names the JSON type of ``value`` in its error messages ("a string", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def invalid_type(expected: str, value: Any) -> PydanticCustomError:
    """A validation error for a value of the wrong JSON type; ``{param}`` is filled in later."""
    return PydanticCustomError(
        "invalid_type",
        "Invalid type for '{param}': expected {expected}, but got {got} instead.",
        {"expected": expected, "got": describe_json_type(value)},
    )


def _stop_sequences(value: Any) -> Any:
    """``stop`` may be a string or a list of up to four strings; normalize to a list."""
    if value is None or isinstance(value, list):
        return value
    if isinstance(value, str):
        return [value]
    raise invalid_type("a string or an array of strings", value)


StopSequences = Annotated[
    # The length bound sits on the list alone: on the union it would be applied to null too.
    Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES)] | None,
    BeforeValidator(_stop_sequences),
]
"""The ``stop`` parameter, normalized to a list of at most four strings."""


def _check_logit_bias(value: dict[str, float] | None) -> dict[str, float] | None:
    for key, bias in (value or {}).items():
        if not key.isascii() or not key.isdigit():
            raise PydanticCustomError(
                "invalid_value",
                "Invalid key in '{param}': '{key}' is not a token id.",
                {"key": key},
            )
        if not -LOGIT_BIAS_LIMIT <= bias <= LOGIT_BIAS_LIMIT:
            raise PydanticCustomError(
                "invalid_value",
                "Invalid value for '{param}': the bias of token {key} is {bias}, but it must be "
                "between -100 and 100.",
                {"key": key, "bias": bias},
            )
    return value


LogitBias = Annotated[dict[str, float] | None, AfterValidator(_check_logit_bias)]
"""``logit_bias``: token id (as a string) to a bias in [-100, 100]."""

Penalty = Annotated[float | None, Field(ge=-2, le=2)]
Temperature = Annotated[float | None, Field(ge=0, le=2)]
TopP = Annotated[float | None, Field(ge=0, le=1)]
Seed = Annotated[int | None, Field(ge=-(2**63), le=2**63 - 1)]


class StreamOptions(RequestModel):
    """``stream_options``: only meaningful with ``stream: true``."""

    include_usage: bool | None = None
    include_obfuscation: bool | None = None


def require_stream(options: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
    """Field validator body: ``stream_options`` is only allowed when ``stream`` is true."""
    if options is not None and not info.data.get("stream"):
        raise PydanticCustomError(
            "invalid_value",
            "The '{param}' parameter is only allowed when 'stream' is enabled.",
        )
    return options


class PromptTokensDetails(WireModel):
    """Breakdown of the prompt tokens."""

    cached_tokens: int = 0


class CompletionTokensDetails(WireModel):
    """Breakdown of the completion tokens."""

    reasoning_tokens: int = 0


class Usage(WireModel):
    """Token counts of one request."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> Usage:
        """Usage with the total and the cached-token breakdown filled in."""
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
        )
