"""The legacy Completions API: ``POST /v1/completions`` request and response (also the stream
chunk shape, which OpenAI keeps identical to the response)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from kakehashi.wire.base import KEEP_NULL, RequestModel, WireModel
from kakehashi.wire.common import (
    FinishReason,
    LogitBias,
    Penalty,
    Seed,
    StopSequences,
    StreamOptions,
    Temperature,
    TopP,
    Usage,
    invalid_type,
    require_stream,
)

MAX_LEGACY_LOGPROBS = 5
DEFAULT_MAX_TOKENS = 16

Prompt = str | list[int]
"""One prompt: text, or token ids."""

_PROMPT_TYPES = (
    "a string, an array of strings, an array of integers or an array of arrays of integers"
)


def _is_token_ids(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    )


def _prompts(value: Any) -> list[Prompt]:
    """Normalize every accepted ``prompt`` form to a list of prompts; ``null`` is OpenAI's
    default, an empty prompt (the model starts from its start-of-text token)."""
    if value is None:
        return [""]
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        raise invalid_type(_PROMPT_TYPES, value)
    if all(isinstance(item, str) for item in value):
        return list(value)
    if _is_token_ids(value):
        prompts: list[Prompt] = [list(value)]
    elif all(_is_token_ids(item) for item in value):
        prompts = [list(item) for item in value]
    else:
        raise invalid_type(_PROMPT_TYPES, value)
    if any(isinstance(ids, list) and min(ids) < 0 for ids in prompts):
        raise PydanticCustomError(
            "invalid_value", "Invalid value for '{param}': token ids must not be negative."
        )
    return prompts


class CompletionRequest(RequestModel):
    """``POST /v1/completions``; ``prompt`` is normalized to a list of prompts."""

    model: str
    prompt: Annotated[list[Prompt], BeforeValidator(_prompts)]
    suffix: str | None = None
    max_tokens: Annotated[int | None, Field(ge=0)] = None
    temperature: Temperature = None
    top_p: TopP = None
    n: Annotated[int | None, Field(ge=1)] = None
    best_of: Annotated[int | None, Field(ge=0, le=20)] = None
    stop: StopSequences = None
    seed: Seed = None
    presence_penalty: Penalty = None
    frequency_penalty: Penalty = None
    logit_bias: LogitBias = None
    logprobs: Annotated[int | None, Field(ge=0, le=MAX_LEGACY_LOGPROBS)] = None
    echo: bool | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(
        cls, value: StreamOptions | None, info: ValidationInfo
    ) -> StreamOptions | None:
        return require_stream(value, info)

    @model_validator(mode="after")
    def _best_of_covers_n(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of < (self.n or 1):
            raise PydanticCustomError(
                "invalid_value",
                "Invalid value for '{param}': best_of must be greater than or equal to n.",
                {"subparam": "best_of"},
            )
        return self

    @property
    def completion_limit(self) -> int:
        """``max_tokens``, or the legacy default of 16."""
        return DEFAULT_MAX_TOKENS if self.max_tokens is None else self.max_tokens

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a usage chunk."""
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class CompletionLogprobs(WireModel):
    """The legacy logprobs shape; with ``echo`` the first prompt token has ``None`` entries."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(WireModel):
    """One choice; in a stream ``finish_reason`` is ``None`` until the choice's last chunk."""

    index: int
    text: str
    logprobs: Annotated[CompletionLogprobs | None, KEEP_NULL] = None
    finish_reason: Annotated[FinishReason | None, KEEP_NULL] = None


class CompletionResponse(WireModel):
    """The body of a completion, and of each chunk of a streamed one."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
