"""Route → schema mapping and SSE framing checks."""

from __future__ import annotations

import json

import pytest

from support.contract import check_body, parse_sse, schema_for


def test_schema_for_routes() -> None:
    chat = ("CreateChatCompletionResponse", "CreateChatCompletionStreamResponse")
    legacy = ("CreateCompletionResponse", "CreateCompletionResponse")
    assert schema_for("POST", "/v1/chat/completions", 200) == chat
    assert schema_for("POST", "/v1/completions", 200) == legacy
    assert schema_for("POST", "/v1/engines/tiny/completions", 200) == legacy
    assert schema_for("GET", "/v1/models", 200) == ("ListModelsResponse", None)
    assert schema_for("GET", "/v1/models/org/name", 200) == ("Model", None)
    assert schema_for("GET", "/v1/nowhere", 404) == ("ErrorResponse", "ErrorResponse")
    assert schema_for("GET", "/health", 200) is None


def test_parse_sse_framing() -> None:
    assert parse_sse('data: {"a": 1}\n\n: keep-alive\n\ndata: [DONE]\n\n') == ['{"a": 1}', "[DONE]"]
    assert parse_sse("data: 1\r\n\r\ndata: [DONE]\r\n\r\n") == ["1", "[DONE]"]
    with pytest.raises(AssertionError, match="blank line"):
        parse_sse("data: 1\n")
    with pytest.raises(AssertionError, match="bad SSE event"):
        parse_sse("data: 1\ndata: 2\n\n")
    with pytest.raises(AssertionError, match="after"):
        parse_sse("data: [DONE]\n\ndata: 1\n\n")


def _chunk(finish_reason: str | None) -> dict[str, object]:
    choice = {"index": 0, "delta": {"content": "x"}, "finish_reason": finish_reason}
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [choice],
    }


def test_check_body_validates_every_chunk() -> None:
    good = f"data: {json.dumps(_chunk(None))}\n\ndata: {json.dumps(_chunk('stop'))}\n\n"
    checked = check_body(
        "POST",
        "/v1/chat/completions",
        200,
        "text/event-stream",
        (good + "data: [DONE]\n\n").encode(),
    )
    assert checked.done and len(checked.chunks or []) == 2

    bad = f"data: {json.dumps(_chunk('done'))}\n\n"
    with pytest.raises(AssertionError, match="finish_reason"):
        check_body(
            "POST", "/v1/chat/completions", 200, "text/event-stream; charset=utf-8", bad.encode()
        )


def test_check_body_errors_and_json() -> None:
    error = {
        "error": {"message": "m", "type": "invalid_request_error", "param": None, "code": None}
    }
    assert check_body("POST", "/v1/x", 404, "application/json", json.dumps(error).encode()).json
    with pytest.raises(AssertionError, match="ErrorResponse"):
        check_body("POST", "/v1/chat/completions", 422, "application/json", b'{"detail": []}')


def test_streamed_text_completion_may_have_null_finish_reason() -> None:
    def frame(finish_reason: str | None, **extra: object) -> str:
        choice = {
            "index": 0,
            "text": "x",
            "logprobs": None,
            "finish_reason": finish_reason,
            **extra,
        }
        chunk = {
            "id": "c",
            "object": "text_completion",
            "created": 1,
            "model": "m",
            "choices": [choice],
        }
        return f"data: {json.dumps(chunk)}\n\n"

    body = frame(None) + frame("length") + "data: [DONE]\n\n"
    check_body("POST", "/v1/completions", 200, "text/event-stream", body.encode())
    with pytest.raises(AssertionError, match="finish_reason"):
        check_body("POST", "/v1/completions", 200, "text/event-stream", frame("eos").encode())
    missing = frame(None).replace(', "finish_reason": null', "")
    assert "finish_reason" not in missing
    with pytest.raises(AssertionError, match="finish_reason"):
        check_body("POST", "/v1/completions", 200, "text/event-stream", missing.encode())


def test_echoed_first_prompt_token_may_have_null_logprob() -> None:
    def body(token_logprobs: list[object], top_logprobs: list[object]) -> bytes:
        logprobs = {
            "tokens": ["a", "b"],
            "token_logprobs": token_logprobs,
            "top_logprobs": top_logprobs,
            "text_offset": [0, 1],
        }
        choice = {"index": 0, "text": "ab", "logprobs": logprobs, "finish_reason": "length"}
        return json.dumps(
            {
                "id": "c",
                "object": "text_completion",
                "created": 1,
                "model": "m",
                "choices": [choice],
            }
        ).encode()

    check_body("POST", "/v1/completions", 200, "application/json", body([None, -1.0], [None, {}]))
    with pytest.raises(AssertionError, match="token_logprobs"):
        check_body("POST", "/v1/completions", 200, "application/json", body([-1.0, None], [{}, {}]))
