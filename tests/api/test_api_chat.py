"""POST /v1/chat/completions on the fake backend (the fake echoes the rendered prompt)."""

from __future__ import annotations

import math

from fastapi.testclient import TestClient

from api.helpers import chat_body, sse_events
from kakehashi.backends.fake import FAKE_MODEL_ID, FakeChatTemplate
from support.openapi import validate

PROMPT = FakeChatTemplate().render([{"role": "user", "content": "hi"}])  # "user: hi\nassistant:"


def test_chat_completion_echoes_the_prompt(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json=chat_body())
    assert response.status_code == 200, response.text
    body = response.json()
    validate("CreateChatCompletionResponse", body)
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == FAKE_MODEL_ID
    assert body["system_fingerprint"] == "fp_fake"
    [choice] = body["choices"]
    assert choice == {
        "index": 0,
        "message": {"role": "assistant", "content": PROMPT, "refusal": None},
        "logprobs": None,
        "finish_reason": "stop",
    }
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(PROMPT)
    assert usage["completion_tokens"] == len(PROMPT) + 1  # and the end-of-text token
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert response.headers["x-request-id"].startswith("req_")
    assert int(response.headers["openai-processing-ms"]) >= 0


def test_model_alias_is_echoed(client: TestClient) -> None:
    body = client.post("/v1/chat/completions", json=chat_body(model="org/alias-model")).json()
    assert body["model"] == "org/alias-model"


def test_max_tokens_gives_length(client: TestClient) -> None:
    for field in ("max_tokens", "max_completion_tokens"):
        body = client.post("/v1/chat/completions", json=chat_body(**{field: 3})).json()
        assert body["choices"][0]["message"]["content"] == PROMPT[:3]
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["usage"]["completion_tokens"] == 3


def test_stop_sequence_is_cut_and_not_returned(client: TestClient) -> None:
    for stop in (": h", [": h"], ["zzz", ": h"]):
        body = client.post("/v1/chat/completions", json=chat_body(stop=stop)).json()
        assert body["choices"][0]["message"]["content"] == "user"
        assert body["choices"][0]["finish_reason"] == "stop"


def test_n_choices_have_indexes_and_usage_counts_prompt_once(client: TestClient) -> None:
    body = client.post("/v1/chat/completions", json=chat_body(n=3, max_tokens=2)).json()
    validate("CreateChatCompletionResponse", body)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert body["usage"]["prompt_tokens"] == len(PROMPT)
    assert body["usage"]["completion_tokens"] == 6


def test_content_parts_and_history(client: TestClient) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "again"},
    ]
    body = client.post("/v1/chat/completions", json=chat_body(messages=messages)).json()
    expected = "system: be brief\nuser: a\nb\nassistant: ok\nuser: again\nassistant:"
    assert body["choices"][0]["message"]["content"] == expected


def test_logprobs_shape(client: TestClient) -> None:
    body = client.post(
        "/v1/chat/completions", json=chat_body(logprobs=True, top_logprobs=3, max_tokens=4)
    ).json()
    validate("CreateChatCompletionResponse", body)
    logprobs = body["choices"][0]["logprobs"]
    assert logprobs["refusal"] is None
    assert [entry["token"] for entry in logprobs["content"]] == list(PROMPT[:4])
    for entry in logprobs["content"]:
        assert entry["bytes"] == list(entry["token"].encode())
        tops = entry["top_logprobs"]
        assert len(tops) == 3
        assert tops[0]["token"] == entry["token"] and tops[0]["logprob"] == entry["logprob"]
        assert [t["logprob"] for t in tops] == sorted((t["logprob"] for t in tops), reverse=True)
        assert sum(math.exp(t["logprob"]) for t in tops) <= 1


def test_logprobs_cover_every_sampled_token(client: TestClient) -> None:
    body = client.post("/v1/chat/completions", json=chat_body(logprobs=True)).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == body["usage"]["completion_tokens"]
    assert "".join(entry["token"] for entry in content) == PROMPT + "<|endoftext|>"
    assert all(entry["top_logprobs"] == [] for entry in content)


def test_non_ascii_tokens_use_bytes_form(client: TestClient) -> None:
    messages = [{"role": "user", "content": "é"}]
    body = client.post(
        "/v1/chat/completions", json=chat_body(messages=messages, logprobs=True)
    ).json()
    content = body["choices"][0]["logprobs"]["content"]
    split = [entry for entry in content if entry["token"].startswith("bytes:")]
    assert [entry["bytes"] for entry in split] == [[0xC3], [0xA9]]
    assert split[0]["token"] == "bytes:\\xc3"
    assert "é" in body["choices"][0]["message"]["content"]


def test_stream_framing(client: TestClient) -> None:
    with client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.read().decode())
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["id"] == chunks[0]["id"] and chunk["created"] == chunks[0]["created"]
        assert "usage" not in chunk
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == PROMPT
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_stream_with_usage_and_n(client: TestClient) -> None:
    body = chat_body(stream=True, n=2, max_tokens=3, stream_options={"include_usage": True})
    events = sse_events(client.post("/v1/chat/completions", json=body).text)
    assert events[-1] == "[DONE]"
    *chunks, last = events[:-1]
    for chunk in events[:-1]:
        validate("CreateChatCompletionStreamResponse", chunk)
    assert all(chunk["usage"] is None for chunk in chunks)
    assert last["choices"] == []
    assert last["usage"]["prompt_tokens"] == len(PROMPT)
    assert last["usage"]["completion_tokens"] == 6
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(c["delta"].get("content", "") for c in mine) == PROMPT[:3]
        assert mine[-1]["finish_reason"] == "length"


def test_stream_logprobs(client: TestClient) -> None:
    body = chat_body(stream=True, logprobs=True, top_logprobs=1, max_tokens=2)
    chunks = sse_events(client.post("/v1/chat/completions", json=body).text)[:-1]
    entries = [
        entry
        for chunk in chunks
        if chunk["choices"][0]["logprobs"]
        for entry in chunk["choices"][0]["logprobs"]["content"]
    ]
    assert [e["token"] for e in entries] == list(PROMPT[:2])


def test_stream_error_after_start_is_an_error_frame() -> None:
    from api.helpers import make_client
    from kakehashi.backends.fake import FakeBackend

    with make_client(FakeBackend(fail_after=2)) as client:
        response = client.post("/v1/chat/completions", json=chat_body(stream=True))
    assert response.status_code == 200
    events = sse_events(response.text)
    assert "[DONE]" not in events
    validate("ErrorResponse", events[-1])
    assert events[-1]["error"]["type"] == "server_error"
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == PROMPT[:2]


def test_non_stream_engine_failure_is_500() -> None:
    from api.helpers import expect_error, make_client
    from kakehashi.backends.fake import FakeBackend

    with make_client(FakeBackend(fail_after=0)) as client:
        error = expect_error(client.post("/v1/chat/completions", json=chat_body()), 500)
    assert error["type"] == "server_error"


def test_requests_style_body_without_content_type_needs_a_key() -> None:
    """A keyed server reads the body whatever its type; an open one wants JSON declared."""
    import json

    from api.helpers import API_KEY, expect_error, make_client

    body = json.dumps(chat_body())
    with make_client(api_keys=[API_KEY]) as keyed:
        auth = {"Authorization": f"Bearer {API_KEY}"}
        response = keyed.post("/v1/chat/completions", content=body, headers=auth)
        assert response.status_code == 200, response.text
    with make_client() as open_server:
        error = expect_error(open_server.post("/v1/chat/completions", content=body), 415)
        assert error["code"] == "unsupported_media_type"


def test_engine_path_chat(client: TestClient) -> None:
    body = chat_body(model=None)
    response = client.post(f"/v1/engines/{FAKE_MODEL_ID}/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == FAKE_MODEL_ID


def test_stop_null_is_no_stop_and_five_are_too_many(client: TestClient) -> None:
    # openai 0.28 code passes stop=None explicitly (seed 001): it means "no stop sequence".
    for path, body in (
        ("/v1/chat/completions", {**chat_body(), "stop": None}),
        ("/v1/completions", {"model": chat_body()["model"], "prompt": "hi", "stop": None}),
    ):
        assert client.post(path, json=body).status_code == 200
        error = client.post(path, json={**body, "stop": ["a", "b", "c", "d", "e"]}).json()
        assert error["error"]["param"] == "stop"
