"""Every validation error: 400 invalid_request_error naming the parameter, never 422."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.helpers import chat_body, expect_error, make_client
from kakehashi.backends.fake import FAKE_MODEL_ID, FakeBackend

CHAT = "/v1/chat/completions"
JSON_TYPE = {"Content-Type": "application/json"}
COMPLETIONS = "/v1/completions"

# (path, body, param, code)
CASES: list[tuple[str, dict[str, Any], str, str | None]] = [
    (CHAT, chat_body(model=None), "model", "missing_required_parameter"),
    (CHAT, chat_body(messages=None), "messages", "missing_required_parameter"),
    (CHAT, chat_body(messages="hi"), "messages", "invalid_type"),
    (CHAT, chat_body(messages=[]), "messages", "empty_array"),
    (
        CHAT,
        chat_body(messages=[{"role": "wizard", "content": "x"}]),
        "messages[0].role",
        "invalid_value",
    ),
    (
        CHAT,
        chat_body(messages=[{"content": "x"}]),
        "messages[0].role",
        "missing_required_parameter",
    ),
    (
        CHAT,
        chat_body(messages=[{"role": "user"}]),
        "messages[0].content",
        "missing_required_parameter",
    ),
    (
        CHAT,
        chat_body(messages=[{"role": "user", "content": 5}]),
        "messages[0].content",
        "invalid_type",
    ),
    (
        CHAT,
        chat_body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
        "messages[0].content",
        "invalid_value",
    ),
    (CHAT, chat_body(model=7), "model", "invalid_type"),
    (CHAT, chat_body(temperature="hot"), "temperature", "invalid_type"),
    (CHAT, chat_body(temperature=2.5), "temperature", "decimal_above_max_value"),
    (CHAT, chat_body(temperature=-0.1), "temperature", "decimal_below_min_value"),
    (CHAT, chat_body(top_p=1.5), "top_p", "decimal_above_max_value"),
    (CHAT, chat_body(n=0), "n", "integer_below_min_value"),
    (CHAT, chat_body(n=17), "n", "integer_above_max_value"),
    (CHAT, chat_body(n=1.5), "n", "invalid_type"),
    (CHAT, chat_body(max_tokens=0), "max_tokens", "integer_below_min_value"),
    (CHAT, chat_body(max_tokens="ten"), "max_tokens", "invalid_type"),
    (CHAT, chat_body(max_completion_tokens=0), "max_completion_tokens", "integer_below_min_value"),
    (CHAT, chat_body(presence_penalty=2.5), "presence_penalty", "decimal_above_max_value"),
    (CHAT, chat_body(frequency_penalty=-3), "frequency_penalty", "decimal_below_min_value"),
    (CHAT, chat_body(logit_bias={"x": 1}), "logit_bias", "invalid_value"),
    (CHAT, chat_body(logit_bias={"5": 101}), "logit_bias", "invalid_value"),
    (CHAT, chat_body(logit_bias={"99999": 1}), "logit_bias", None),
    (CHAT, chat_body(logprobs=True, top_logprobs=21), "top_logprobs", "integer_above_max_value"),
    (CHAT, chat_body(top_logprobs=2), "top_logprobs", "invalid_value"),
    (CHAT, chat_body(logprobs="yes"), "logprobs", "invalid_type"),
    (CHAT, chat_body(stop=["a", "b", "c", "d", "e"]), "stop", "array_above_max_length"),
    (CHAT, chat_body(stop=5), "stop", "invalid_type"),
    (CHAT, chat_body(stream_options={"include_usage": True}), "stream_options", "invalid_value"),
    (CHAT, chat_body(seed="1"), "seed", "invalid_type"),
    (COMPLETIONS, {"model": FAKE_MODEL_ID}, "prompt", "missing_required_parameter"),
    (COMPLETIONS, {"model": FAKE_MODEL_ID, "prompt": 5}, "prompt", "invalid_type"),
    (COMPLETIONS, {"model": FAKE_MODEL_ID, "prompt": [1, "a"]}, "prompt", "invalid_type"),
    (COMPLETIONS, {"model": FAKE_MODEL_ID, "prompt": [[1], []]}, "prompt", "invalid_type"),
    (COMPLETIONS, {"model": FAKE_MODEL_ID, "prompt": [-1]}, "prompt", "invalid_value"),
    (COMPLETIONS, {"model": FAKE_MODEL_ID, "prompt": [258]}, "prompt", None),
    (
        COMPLETIONS,
        {"model": FAKE_MODEL_ID, "prompt": "x", "logprobs": 6},
        "logprobs",
        "integer_above_max_value",
    ),
    (
        COMPLETIONS,
        {"model": FAKE_MODEL_ID, "prompt": "x", "temperature": 3},
        "temperature",
        "decimal_above_max_value",
    ),
    (COMPLETIONS, {"model": FAKE_MODEL_ID, "prompt": "x", "n": 0}, "n", "integer_below_min_value"),
    (
        COMPLETIONS,
        {"model": FAKE_MODEL_ID, "prompt": "x", "max_tokens": -1},
        "max_tokens",
        "integer_below_min_value",
    ),
    (
        COMPLETIONS,
        {"model": FAKE_MODEL_ID, "prompt": "x", "n": 2, "best_of": 1},
        "best_of",
        "invalid_value",
    ),
    (COMPLETIONS, {"model": FAKE_MODEL_ID, "prompt": "x", "best_of": 3}, "best_of", None),
    (COMPLETIONS, {"model": FAKE_MODEL_ID, "prompt": "x", "suffix": "y"}, "suffix", None),
]


@pytest.mark.parametrize(("path", "body", "param", "code"), CASES, ids=lambda v: str(v)[:40])
def test_invalid_request(
    client: TestClient, path: str, body: dict[str, Any], param: str, code: str | None
) -> None:
    error = expect_error(client.post(path, json=body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] == code
    assert error["message"]
    if code not in (None, "invalid_value", "invalid_type"):
        assert f"'{param}'" in error["message"]


def test_messages_say_what_is_wrong(client: TestClient) -> None:
    error = expect_error(client.post(CHAT, json=chat_body(temperature=3)), 400)
    assert error["message"] == (
        "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, "
        "but got 3 instead."
    )
    error = expect_error(
        client.post(CHAT, json=chat_body(messages=[{"role": "x", "content": "y"}])), 400
    )
    assert error["message"].startswith("Invalid value: 'x'. Supported values are: 'system'")


@pytest.mark.parametrize("raw", [b'{"model": "x", "messages": [', b"not json", b"", b"\xff"])
def test_malformed_json(client: TestClient, raw: bytes) -> None:
    for path in (CHAT, COMPLETIONS):
        error = expect_error(client.post(path, content=raw, headers=JSON_TYPE), 400)
        assert error["message"].startswith("We could not parse the JSON body of your request.")
        assert error["param"] is None


def test_body_must_be_an_object(client: TestClient) -> None:
    error = expect_error(client.post(CHAT, json=[1, 2]), 400)
    assert error["param"] is None and "object" in error["message"]


def test_unknown_model(client: TestClient) -> None:
    for path, body in [
        (CHAT, chat_body(model="gpt-x")),
        (COMPLETIONS, {"model": "gpt-x", "prompt": "a"}),
    ]:
        error = expect_error(client.post(path, json=body), 404)
        assert error == {
            "message": "The model `gpt-x` does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": None,  # as OpenAI sends it (seed 000 shows it verbatim)
            "code": "model_not_found",
        }
    error = expect_error(client.post(CHAT, json=chat_body(model="gpt-x", stream=True)), 404)
    assert error["code"] == "model_not_found"


def test_context_length_exceeded() -> None:
    with make_client(FakeBackend(max_model_len=64)) as client:
        long = chat_body(messages=[{"role": "user", "content": "x" * 80}])
        for body in (
            long,
            chat_body(max_tokens=60),
            chat_body(max_completion_tokens=60, stream=True),
        ):
            error = expect_error(client.post(CHAT, json=body), 400)
            assert error["code"] == "context_length_exceeded"
            assert error["param"] == "messages"
            assert error["message"].startswith("This model's maximum context length is 64 tokens.")
        error = expect_error(client.post(CHAT, json=chat_body(max_tokens=60)), 400)
        assert "requested 79 tokens (19 in the messages, 60 in the completion)" in error["message"]
        body = {"model": FAKE_MODEL_ID, "prompt": "x" * 60, "max_tokens": 16}
        error = expect_error(client.post(COMPLETIONS, json=body), 400)
        assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"
        # Exactly filling the window is fine.
        ok = client.post(CHAT, json=chat_body(max_tokens=64 - 19))
        assert ok.status_code == 200, ok.text


def test_unknown_route_and_method(client: TestClient) -> None:
    error = expect_error(client.get("/v1/nowhere"), 404)
    assert error["message"] == "Invalid URL (GET /v1/nowhere)"
    expect_error(client.post("/nowhere", json={}), 404)
    error = expect_error(client.get(CHAT), 405)
    assert error["message"] == "Invalid method for URL (GET /v1/chat/completions)"


def test_unexpected_exception_is_a_500_envelope() -> None:
    class BrokenBackend(FakeBackend):
        async def chat(self, request: Any, call: Any) -> Any:
            raise RuntimeError("boom")

    with make_client(BrokenBackend()) as client:
        error = expect_error(client.post(CHAT, json=chat_body()), 500)
    assert error["type"] == "server_error"
    assert "boom" not in error["message"]
