"""POST /v1/completions and /v1/engines/{engine}/completions on the fake backend."""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient

from api.helpers import sse_events
from kakehashi.backends.fake import FAKE_MODEL_ID
from support.contract import validate_chunk
from support.openapi import validate


def _without_echo_nulls(body: dict[str, Any]) -> dict[str, Any]:
    """The response as the spec can check it: with ``echo``, OpenAI (and we) report ``null`` for
    the first prompt token's logprob, which the spec's ``number`` items do not allow."""
    bridged = json.loads(json.dumps(body))
    for choice in bridged["choices"]:
        logprobs = choice.get("logprobs") or {}
        for key, filler in (("token_logprobs", 0.0), ("top_logprobs", {})):
            logprobs[key] = [filler if v is None else v for v in logprobs.get(key, [])]
    return bridged


def complete(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/completions", json={"model": FAKE_MODEL_ID, **body})
    assert response.status_code == 200, response.text
    data = response.json()
    validate("CreateCompletionResponse", _without_echo_nulls(data))
    assert data["object"] == "text_completion"
    assert data["id"].startswith("cmpl-")
    return data


def test_default_max_tokens_is_16(client: TestClient) -> None:
    body = complete(client, prompt="abcdefghijklmnopqrstuvwxyz")
    [choice] = body["choices"]
    assert choice["text"] == "abcdefghijklmnop"
    assert choice["finish_reason"] == "length"
    assert choice["logprobs"] is None
    # The fake tokenizer adds a begin token to text prompts, as Llama's does.
    assert body["usage"] == {
        "prompt_tokens": 27,
        "completion_tokens": 16,
        "total_tokens": 43,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def test_prompt_forms_and_choice_order(client: TestClient) -> None:
    assert complete(client, prompt="ab")["choices"][0]["text"] == "ab"
    texts = [c["text"] for c in complete(client, prompt=["ab", "cd"], n=2)["choices"]]
    assert texts == ["ab", "ab", "cd", "cd"]
    assert complete(client, prompt=[104, 105])["choices"][0]["text"] == "hi"
    body = complete(client, prompt=[[104], [105, 106]], max_tokens=5)
    assert [(c["index"], c["text"]) for c in body["choices"]] == [(0, "h"), (1, "ij")]
    assert body["usage"]["prompt_tokens"] == 3


def test_stop_and_finish_reasons(client: TestClient) -> None:
    body = complete(client, prompt="hello world", stop=["o w"], max_tokens=50)
    assert body["choices"][0] == {
        "index": 0,
        "text": "hell",
        "logprobs": None,
        "finish_reason": "stop",
    }


def test_legacy_logprobs_shape(client: TestClient) -> None:
    body = complete(client, prompt="hé", logprobs=2, max_tokens=3)
    logprobs = body["choices"][0]["logprobs"]
    assert logprobs["tokens"] == ["h", "bytes:\\xc3", "bytes:\\xa9"]
    assert logprobs["text_offset"] == [0, 1, 1]  # both bytes of "é" are inside character 1
    assert all(value < 0 for value in logprobs["token_logprobs"])
    for token, chosen, top in zip(
        logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True
    ):
        assert top[token] == chosen
        assert len(top) == 2


def test_logprobs_zero_returns_the_chosen_token(client: TestClient) -> None:
    body = complete(client, prompt="ab", logprobs=0, max_tokens=2)
    logprobs = body["choices"][0]["logprobs"]
    assert logprobs["top_logprobs"] == [
        {"a": logprobs["token_logprobs"][0]},
        {"b": logprobs["token_logprobs"][1]},
    ]


def test_echo_with_prompt_logprobs(client: TestClient) -> None:
    body = complete(client, prompt="abc", echo=True, logprobs=1, max_tokens=2)
    [choice] = body["choices"]
    assert choice["text"] == "abcab"
    logprobs = choice["logprobs"]
    # The BOS the tokenizer added is read but not echoed: the tokens spell the text exactly.
    assert logprobs["tokens"] == ["a", "b", "c", "a", "b"]
    assert all(isinstance(v, float) for v in logprobs["token_logprobs"])
    assert logprobs["text_offset"] == [0, 1, 2, 3, 4]


def test_echo_without_logprobs_and_max_tokens_zero(client: TestClient) -> None:
    assert complete(client, prompt="abc", echo=True, max_tokens=1)["choices"][0]["text"] == "abca"
    body = complete(client, prompt="abc", echo=True, max_tokens=0, logprobs=0)
    [choice] = body["choices"]
    assert choice["text"] == "abc"
    assert choice["finish_reason"] == "length"
    assert choice["logprobs"]["tokens"] == ["a", "b", "c"]


def test_stream(client: TestClient) -> None:
    body = {
        "model": FAKE_MODEL_ID,
        "prompt": ["ab", "cd"],
        "max_tokens": 5,
        "stream": True,
        "echo": True,
        "stream_options": {"include_usage": True},
    }
    events = sse_events(client.post("/v1/completions", json=body).text)
    assert events[-1] == "[DONE]"
    *chunks, last = events[:-1]
    validate("CreateCompletionResponse", last)
    for chunk in chunks:
        validate_chunk("CreateCompletionResponse", chunk)
        assert chunk["usage"] is None
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 6
    for index, expected in [(0, "abab"), (1, "cdcd")]:
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == index]
        assert "".join(c["text"] for c in mine) == expected
        assert [c["finish_reason"] for c in mine][-1] == "stop"
        assert all(c["finish_reason"] is None for c in mine[:-1])


def test_stream_logprobs_continue_offsets(client: TestClient) -> None:
    body = {"model": FAKE_MODEL_ID, "prompt": "abc", "max_tokens": 3, "stream": True, "logprobs": 1}
    chunks = sse_events(client.post("/v1/completions", json=body).text)[:-1]
    offsets = [o for c in chunks for o in c["choices"][0]["logprobs"]["text_offset"]]
    assert offsets == [0, 1, 2]


def test_engines_route_for_openai_028(client: TestClient) -> None:
    response = client.post(
        f"/v1/engines/{FAKE_MODEL_ID}/completions", json={"prompt": "hey", "max_tokens": 2}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    validate("CreateCompletionResponse", body)
    assert body["model"] == FAKE_MODEL_ID
    assert body["choices"][0]["text"] == "he"
    response = client.post("/v1/engines/org/alias-model/completions", json={"prompt": "hey"})
    assert response.json()["model"] == "org/alias-model"
