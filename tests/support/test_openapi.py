"""The OpenAPI validator accepts what OpenAI sends and rejects what it would not."""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest

from support import openapi
from support.openapi import validate


def _chat_completion() -> dict[str, Any]:
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "tiny",
        "system_fingerprint": "fp_kakehashi",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello!", "refusal": None},
                "logprobs": {
                    "content": [
                        {
                            "token": "Hello",
                            "logprob": -0.25,
                            "bytes": [72, 101, 108, 108, 111],
                            "top_logprobs": [
                                {
                                    "token": "Hello",
                                    "logprob": -0.25,
                                    "bytes": [72, 101, 108, 108, 111],
                                }
                            ],
                        }
                    ],
                    "refusal": None,
                },
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
    }


def _chunk(**choice: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "tiny",
        "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": None, **choice}],
    }


def _invalid(schema: str, body: Any) -> str:
    with pytest.raises(AssertionError) as caught:
        validate(schema, body)
    return str(caught.value)


def test_spec_loads_quickly_and_includes_legacy_schemas() -> None:
    started = time.monotonic()
    names = openapi.schema_names()
    assert time.monotonic() - started < 10
    for name in ("CreateChatCompletionResponse", "ErrorResponse", "CreateEditResponse"):
        assert name in names


def test_chat_completion_valid_and_invalid() -> None:
    validate("CreateChatCompletionResponse", _chat_completion())

    wrong_finish = _chat_completion()
    wrong_finish["choices"][0]["finish_reason"] = "eos"
    assert "$.choices[0].finish_reason" in _invalid("CreateChatCompletionResponse", wrong_finish)

    no_refusal = _chat_completion()
    del no_refusal["choices"][0]["message"]["refusal"]
    assert "'refusal' is a required property" in _invalid(
        "CreateChatCompletionResponse", no_refusal
    )

    no_bytes = _chat_completion()
    del no_bytes["choices"][0]["logprobs"]["content"][0]["top_logprobs"][0]["bytes"]
    message = _invalid("CreateChatCompletionResponse", no_bytes)
    assert "$.choices[0].logprobs" in message


def test_stream_chunks_with_nullable_fields() -> None:
    validate("CreateChatCompletionStreamResponse", _chunk(delta={"role": "assistant"}))
    validate("CreateChatCompletionStreamResponse", _chunk(delta={"content": "Hi"}))
    validate("CreateChatCompletionStreamResponse", _chunk(finish_reason="length"))
    usage_only = _chunk()
    usage_only["choices"] = []
    usage_only["usage"] = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    validate("CreateChatCompletionStreamResponse", usage_only)
    validate("CreateChatCompletionStreamResponse", {**_chunk(), "usage": None})

    # nullable + enum: null is accepted, other strings are not
    assert "finish_reason" in _invalid(
        "CreateChatCompletionStreamResponse", _chunk(finish_reason="x")
    )
    wrong_object = {**_chunk(), "object": "chat.completion"}
    assert "$.object" in _invalid("CreateChatCompletionStreamResponse", wrong_object)


def test_legacy_completion_logprobs_shape() -> None:
    body = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": "tiny",
        "choices": [
            {
                "index": 0,
                "text": " world",
                "finish_reason": "length",
                "logprobs": {
                    "tokens": [" world"],
                    "token_logprobs": [-1.5],
                    "top_logprobs": [{" world": -1.5, "!": -2.0}],
                    "text_offset": [5],
                },
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    validate("CreateCompletionResponse", body)
    broken = copy.deepcopy(body)
    broken["choices"][0]["logprobs"]["text_offset"] = ["5"]
    assert "text_offset" in _invalid("CreateCompletionResponse", broken)


def test_model_list() -> None:
    model = {"id": "tiny", "object": "model", "created": 1_700_000_000, "owned_by": "kakehashi"}
    validate("ListModelsResponse", {"object": "list", "data": [model]})
    validate("Model", model)
    assert "owned_by" in _invalid("Model", {k: v for k, v in model.items() if k != "owned_by"})
    assert "$.object" in _invalid("ListModelsResponse", {"object": "models", "data": []})


def test_error_response() -> None:
    error = {"message": "nope", "type": "invalid_request_error", "param": None, "code": None}
    validate("ErrorResponse", {"error": error})
    validate("ErrorResponse", {"error": {**error, "param": "model", "code": "model_not_found"}})
    assert "'param' is a required property" in _invalid(
        "ErrorResponse", {"error": {k: v for k, v in error.items() if k != "param"}}
    )
    assert "$.error.code" in _invalid("ErrorResponse", {"error": {**error, "code": 404}})


def test_unknown_schema_name() -> None:
    with pytest.raises(KeyError, match="NoSuchSchema"):
        validate("NoSuchSchema", {})


def test_openapi_30_keywords_are_converted() -> None:
    nullable_enum = {"type": "string", "enum": ["a"], "nullable": True, "description": "d"}
    assert openapi._convert(nullable_enum) == {
        "anyOf": [{"type": "string", "enum": ["a"], "description": "d"}, {"type": "null"}]
    }
    assert openapi._convert({"type": "number", "minimum": 0, "exclusiveMinimum": True}) == {
        "type": "number",
        "exclusiveMinimum": 0,
    }
    assert openapi._convert({"type": "number", "minimum": 1, "exclusiveMinimum": False}) == {
        "type": "number",
        "minimum": 1,
    }
    assert openapi._convert({"items": [{"nullable": False, "type": "integer"}]}) == {
        "items": [{"type": "integer"}]
    }
