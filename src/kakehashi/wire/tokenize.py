"""``POST /tokenize`` and ``POST /detokenize``, in the shape vLLM's server gives them.

These are not OpenAI endpoints; vLLM and llama-server users know them, and the client kit uses
them to fit a conversation into a model's context window. The response says whether the count
is ``exact`` (the model's own tokenizer) or an estimate (an upstream that cannot tokenize).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from kakehashi.wire.base import KEEP_NULL, RequestModel, WireModel
from kakehashi.wire.chat import ChatMessage


class TokenizeRequest(RequestModel):
    """Text (``prompt``) or a conversation (``messages``, rendered with the chat template) to
    count. ``add_special_tokens`` defaults to true for a prompt and false for messages, whose
    template already writes them."""

    model: str
    prompt: str | None = None
    messages: Annotated[list[ChatMessage] | None, Field(min_length=1, validate_default=True)] = None
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True
    tools: list[dict[str, Any]] | None = None

    @field_validator("messages")
    @classmethod
    def _one_input(cls, value: list[ChatMessage] | None, info: ValidationInfo) -> Any:
        if (info.data.get("prompt") is None) == (value is None):
            raise PydanticCustomError(
                "invalid_value",
                "Invalid '{param}': give exactly one of 'prompt' (text) or 'messages' (a "
                "conversation) to tokenize.",
            )
        return value


class TokenizeResponse(WireModel):
    """The token count, the model's context window (``null`` when unknown) and the token ids
    (``null`` when the count is an estimate)."""

    count: int
    max_model_len: Annotated[int | None, KEEP_NULL] = None
    tokens: Annotated[list[int] | None, KEEP_NULL] = None
    exact: bool


class DetokenizeRequest(RequestModel):
    """Token ids to turn back into text."""

    model: str
    tokens: list[Annotated[int, Field(ge=0)]]


class DetokenizeResponse(WireModel):
    """The text of the tokens."""

    prompt: str
