"""Plain ``requests``/``httpx`` code, exactly as tutorials write it, with SSE read by hand."""

from __future__ import annotations

import json

import httpx
import pytest
import requests

from e2e.common import API_KEY, LLAMA_MODEL, MESSAGES
from support.contract import check_response, parse_sse
from support.server import ServerProcess


def test_tutorial_chat_request(llama_server: ServerProcess) -> None:
    base = llama_server.base_url
    response = requests.post(
        f"{base}/chat/completions",
        headers={"Authorization": f"Bearer {API_KEY}"},
        data=json.dumps({"model": LLAMA_MODEL, "messages": MESSAGES, "max_tokens": 8}),
        timeout=60,
    )
    assert response.status_code == 200, response.text
    body = check_response(response).json
    assert isinstance(body["choices"][0]["message"]["content"], str)
    assert body["usage"]["total_tokens"] == (
        body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )


def test_tutorial_chat_request_with_json_content_type(llama_server: ServerProcess) -> None:
    response = requests.post(
        f"{llama_server.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        json={"model": LLAMA_MODEL, "messages": MESSAGES, "max_tokens": 4, "temperature": 0},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert check_response(response).json["choices"][0]["finish_reason"] in ("stop", "length")


def test_sse_read_by_hand(llama_server: ServerProcess) -> None:
    payload = {
        "model": LLAMA_MODEL,
        "messages": MESSAGES,
        "max_tokens": 10,
        "temperature": 0,
        "stream": True,
    }
    whole = requests.post(
        f"{llama_server.base_url}/chat/completions",
        headers=llama_server.auth_headers(),
        json={**payload, "stream": False},
        timeout=60,
    ).json()["choices"][0]["message"]["content"]

    with requests.post(
        f"{llama_server.base_url}/chat/completions",
        headers=llama_server.auth_headers(),
        data=json.dumps(payload),
        stream=True,
        timeout=60,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line.decode("utf-8") for line in response.iter_lines()]

    data = [line[len("data: ") :] for line in lines if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    assert all(line == "" or line.startswith(("data: ", ":")) for line in lines)
    chunks = [json.loads(item) for item in data[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == whole
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_completion_stream_framing_with_httpx(llama_server: ServerProcess) -> None:
    payload = {"model": LLAMA_MODEL, "prompt": "Hello", "max_tokens": 6, "stream": True}
    with httpx.Client(timeout=60) as http:
        response = http.post(
            f"{llama_server.base_url}/completions",
            headers=llama_server.auth_headers(),
            json=payload,
        )
    assert response.status_code == 200
    checked = check_response(response)  # every chunk against the schema
    assert checked.done
    assert parse_sse(response.text)[-1] == "[DONE]"
    assert [c["choices"][0]["finish_reason"] for c in checked.chunks if c["choices"]][
        -1
    ] == "length"


@pytest.mark.parametrize(
    ("path", "request_body"),
    [
        ("/chat/completions", {"messages": MESSAGES}),
        ("/completions", {"prompt": "The bridge"}),
    ],
)
def test_include_usage_chunks(
    llama_server: ServerProcess, path: str, request_body: dict[str, object]
) -> None:
    """Documented in the spec: with include_usage, a last chunk with ``choices: []`` and the
    usage; every other chunk carries ``"usage": null``."""
    body = {
        "model": LLAMA_MODEL,
        "max_tokens": 5,
        "stream": True,
        "stream_options": {"include_usage": True},
        **request_body,
    }
    response = httpx.post(
        llama_server.base_url + path, json=body, headers=llama_server.auth_headers(), timeout=60
    )
    checked = check_response(response)
    assert checked.done and checked.chunks
    *others, last = checked.chunks
    assert last["choices"] == []
    assert last["usage"]["completion_tokens"] == 5
    assert last["usage"]["total_tokens"] == last["usage"]["prompt_tokens"] + 5
    for chunk in others:
        assert "usage" in chunk and chunk["usage"] is None, chunk
