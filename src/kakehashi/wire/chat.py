"""The Chat Completions API: ``POST /v1/chat/completions`` request, response and stream chunk."""

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

MAX_TOP_LOGPROBS = 20

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]
_ROLES_NEEDING_CONTENT = frozenset({"system", "developer", "user", "tool"})


TEXT_PART_TYPES = frozenset({"text", "input_text"})


def _message_content(value: Any) -> Any:
    """Message content: a string, or a list of content parts (objects with a ``type``), kept
    as they are so that an upstream receives them; text parts must carry a string ``text``."""
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise invalid_type("a string or an array of content parts", value)
    if not value:
        raise PydanticCustomError(
            "too_short",
            "Invalid '{param}': empty array. Expected an array with minimum length 1, but got "
            "an empty array instead.",
            {"min_length": 1, "actual_length": 0},
        )
    for part in value:
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise invalid_type("an array of content parts (objects with a 'type')", part)
        if part["type"] in TEXT_PART_TYPES and not isinstance(part.get("text"), str):
            raise invalid_type("a string in the 'text' of every text part", part.get("text"))
    return value


MessageContent = Annotated[str | list[dict[str, Any]] | None, BeforeValidator(_message_content)]


class ChatMessage(RequestModel):
    """One message of the conversation; ``content`` is a string or a list of content parts."""

    role: Role
    content: MessageContent = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    function_call: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _content_present(self) -> ChatMessage:
        if self.content is None and self.role in _ROLES_NEEDING_CONTENT:
            raise PydanticCustomError(
                "missing_required_parameter",
                "Missing required parameter: '{param}'.",
                {"subparam": "content"},
            )
        return self

    @property
    def non_text_parts(self) -> list[str]:
        """The types of the content parts that are not text (images, audio, files)."""
        if not isinstance(self.content, list):
            return []
        return [p["type"] for p in self.content if p["type"] not in TEXT_PART_TYPES]

    @property
    def text(self) -> str | None:
        """The content as plain text: text parts joined by newlines."""
        if not isinstance(self.content, list):
            return self.content
        return "\n".join(p["text"] for p in self.content if p["type"] in TEXT_PART_TYPES)

    def template_dict(self) -> dict[str, Any]:
        """The message as chat templates expect it: its modelled fields that are set, with the
        content as plain text."""
        data = self.model_dump(exclude_none=True, include=set(type(self).model_fields))
        if self.content is not None:
            data["content"] = self.text
        return data


class ChatCompletionRequest(RequestModel):
    """``POST /v1/chat/completions``. Field order matters: later validators read earlier fields."""

    model: str
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    temperature: Temperature = None
    top_p: TopP = None
    n: Annotated[int | None, Field(ge=1)] = None
    max_tokens: Annotated[int | None, Field(ge=1)] = None
    max_completion_tokens: Annotated[int | None, Field(ge=1)] = None
    stop: StopSequences = None
    seed: Seed = None
    presence_penalty: Penalty = None
    frequency_penalty: Penalty = None
    logit_bias: LogitBias = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int | None, Field(ge=0, le=MAX_TOP_LOGPROBS)] = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    tools: list[dict[str, Any]] | None = None
    user: str | None = None

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_needs_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and not info.data.get("logprobs"):
            raise PydanticCustomError(
                "invalid_value",
                "Invalid value for '{param}': 'logprobs' must be set to true when "
                "'top_logprobs' is used.",
            )
        return value

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(
        cls, value: StreamOptions | None, info: ValidationInfo
    ) -> StreamOptions | None:
        return require_stream(value, info)

    @property
    def completion_limit(self) -> int | None:
        """The requested completion length, if any (``max_completion_tokens`` wins)."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a usage chunk."""
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class TopLogprob(WireModel):
    """One of the most likely tokens at a position."""

    token: str
    logprob: float
    bytes: Annotated[list[int] | None, KEEP_NULL] = None


class ChatTokenLogprob(TopLogprob):
    """The sampled token at a position, with the most likely alternatives."""

    top_logprobs: list[TopLogprob]


class ChatChoiceLogprobs(WireModel):
    """``choices[i].logprobs`` of a chat completion."""

    content: Annotated[list[ChatTokenLogprob] | None, KEEP_NULL] = None
    refusal: Annotated[list[ChatTokenLogprob] | None, KEEP_NULL] = None


class ChatResponseMessage(WireModel):
    """The assistant's reply."""

    role: Literal["assistant"] = "assistant"
    content: Annotated[str | None, KEEP_NULL] = None
    refusal: Annotated[str | None, KEEP_NULL] = None


class ChatChoice(WireModel):
    """One choice of a chat completion."""

    index: int
    message: ChatResponseMessage
    logprobs: Annotated[ChatChoiceLogprobs | None, KEEP_NULL] = None
    finish_reason: FinishReason


class ChatCompletionResponse(WireModel):
    """The body of a non-streamed chat completion."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ChatDelta(WireModel):
    """What a stream chunk adds to one choice's message."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(WireModel):
    """One choice of a stream chunk."""

    index: int
    delta: ChatDelta
    logprobs: Annotated[ChatChoiceLogprobs | None, KEEP_NULL] = None
    finish_reason: Annotated[FinishReason | None, KEEP_NULL] = None


class ChatCompletionChunk(WireModel):
    """One ``data:`` frame of a streamed chat completion.

    ``usage`` is omitted unless set; with ``stream_options.include_usage`` it is set to ``None``
    on every chunk but the last, which has no choices.
    """

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    system_fingerprint: str | None = None
    usage: Usage | None = None
