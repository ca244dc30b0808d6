"""Request normalization and response serialization of the wire shapes."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from kakehashi.wire.base import forwarded
from kakehashi.wire.chat import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatResponseMessage,
)
from kakehashi.wire.common import Usage, describe_json_type
from kakehashi.wire.completions import CompletionChoice, CompletionRequest
from kakehashi.wire.errors import ErrorDetail, ErrorResponse
from kakehashi.wire.models import ModelCard, ModelList
from kakehashi.wire.sse import DONE, encode_event
from support.openapi import validate


def chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    )


def errors_of(fields: dict[str, Any]) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as caught:
        chat(**fields)
    return caught.value.errors()


def test_stop_is_normalized_to_a_list() -> None:
    assert chat(stop="x").stop == ["x"]
    assert chat(stop=["a", "b"]).stop == ["a", "b"]
    assert chat().stop is None


def test_content_parts_and_unknown_fields_are_kept_for_an_upstream() -> None:
    parts = [
        {"type": "text", "text": "a"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
        {"type": "text", "text": "b"},
    ]
    request = chat(
        messages=[{"role": "user", "content": parts, "extra": 1}],
        response_format={"type": "json_object"},
        metadata={"k": "v"},
        temperature=None,
    )
    message = request.messages[0]
    assert message.content == parts
    assert message.text == "a\nb" and message.non_text_parts == ["image_url"]
    assert message.template_dict() == {"role": "user", "content": "a\nb"}
    assert forwarded(request) == {
        "model": "m",
        "messages": [{"role": "user", "content": parts, "extra": 1}],
        "response_format": {"type": "json_object"},
        "metadata": {"k": "v"},
    }


def test_content_parts_need_a_type_and_text_parts_a_text() -> None:
    for content in ([{"text": "a"}], ["a"], [{"type": "text", "text": 5}]):
        [error] = errors_of({"messages": [{"role": "user", "content": content}]})
        assert error["type"] == "invalid_type", content


def test_assistant_may_omit_content() -> None:
    request = chat(messages=[{"role": "assistant", "tool_calls": [{"id": "1"}]}])
    assert request.messages[0].content is None


def test_strict_types() -> None:
    assert errors_of({"temperature": "1"})[0]["type"] == "float_type"
    assert errors_of({"n": True})[0]["type"] == "int_type"
    assert chat(temperature=1).temperature == 1.0  # an integer is a valid number


def test_cross_field_rules_name_their_field() -> None:
    [error] = errors_of({"top_logprobs": 1})
    assert error["loc"] == ("top_logprobs",)
    [error] = errors_of({"stream_options": {"include_usage": True}})
    assert error["loc"] == ("stream_options",)
    assert chat(logprobs=True, top_logprobs=0).top_logprobs == 0
    assert chat(stream=True, stream_options={"include_usage": True}).include_usage


def test_completion_limit_prefers_max_completion_tokens() -> None:
    assert chat(max_tokens=5, max_completion_tokens=7).completion_limit == 7
    assert chat(max_tokens=5).completion_limit == 5
    assert chat().completion_limit is None


@pytest.mark.parametrize(
    ("prompt", "normalized"),
    [
        ("a", ["a"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2], [[1, 2]]),
        ([[1], [2, 3]], [[1], [2, 3]]),
    ],
)
def test_prompt_forms(prompt: Any, normalized: Any) -> None:
    request = CompletionRequest.model_validate({"model": "m", "prompt": prompt})
    assert request.prompt == normalized
    assert request.completion_limit == 16


@pytest.mark.parametrize("prompt", [[], [True], [1, "a"], [[1], []], {"a": 1}, 1.5])
def test_bad_prompts(prompt: Any) -> None:
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate({"model": "m", "prompt": prompt})


def test_describe_json_type() -> None:
    names = [describe_json_type(v) for v in (None, True, 1, 1.5, "s", [], {})]
    assert names == [
        "null",
        "a boolean",
        "an integer",
        "a decimal",
        "a string",
        "an array",
        "an object",
    ]


def test_response_keeps_required_nulls_and_drops_optional_ones() -> None:
    response = ChatCompletionResponse(
        id="chatcmpl-1",
        created=1,
        model="m",
        choices=[
            ChatChoice(index=0, message=ChatResponseMessage(content="x"), finish_reason="stop")
        ],
    )
    body = response.model_dump(mode="json")
    assert body == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "x", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
    }
    validate("CreateChatCompletionResponse", body)


def test_chunk_usage_is_null_only_when_set() -> None:
    choice = ChatChunkChoice(index=0, delta=ChatDelta(content="a"))
    plain = ChatCompletionChunk(id="c", created=1, model="m", choices=[choice])
    assert "usage" not in plain.model_dump(mode="json")
    with_usage = ChatCompletionChunk(id="c", created=1, model="m", choices=[choice], usage=None)
    body = with_usage.model_dump(mode="json")
    assert body["usage"] is None
    assert body["choices"][0] == {
        "index": 0,
        "delta": {"content": "a"},
        "logprobs": None,
        "finish_reason": None,
    }
    validate("CreateChatCompletionStreamResponse", body)


def test_usage_and_models_and_errors_validate() -> None:
    validate("CompletionUsage", Usage.of(3, 4, cached_tokens=2).model_dump(mode="json"))
    assert Usage.of(3, 4).total_tokens == 7
    models = ModelList(data=[ModelCard(id="a/b", created=1, owned_by="me")])
    validate("ListModelsResponse", models.model_dump(mode="json"))
    error = ErrorResponse(error=ErrorDetail(message="m", type="t"))
    assert error.model_dump(mode="json") == {
        "error": {"message": "m", "type": "t", "param": None, "code": None}
    }
    choice = CompletionChoice(index=0, text="x", finish_reason="length")
    assert choice.model_dump(mode="json")["logprobs"] is None


def test_sse_frames() -> None:
    frame = encode_event(ModelCard(id="é", created=1, owned_by="x"))
    assert frame == 'data: {"id":"é","object":"model","created":1,"owned_by":"x"}\n\n'.encode()
    assert DONE == b"data: [DONE]\n\n"
