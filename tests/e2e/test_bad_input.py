"""Inputs a careless or hostile client sends get a 4xx envelope, never a 500 (issue 14,
defects 1, 3, 4, 9 and 12), on the shared keyed server over raw HTTP."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from e2e.common import API_KEY, LLAMA_MODEL
from support.contract import check_response
from support.server import ServerProcess

AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
CHAT = {"model": LLAMA_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
COMPLETION = {"model": LLAMA_MODEL, "prompt": "Once", "max_tokens": 3}
EMBEDDING = {"model": "text-embedding-ada-002", "input": "a bridge"}


def _post(server: ServerProcess, path: str, body: bytes | dict[str, Any]) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{server.base_url}{path}", content=content, headers=AUTH, timeout=60)


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return check_response(response).json["error"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/chat/completions", CHAT),
        ("/completions", COMPLETION),
        (f"/engines/{LLAMA_MODEL}/completions", {"prompt": "Once", "max_tokens": 3}),
        (f"/engines/{LLAMA_MODEL}/chat/completions", {"messages": CHAT["messages"]}),
    ],
)
def test_null_optional_fields_mean_unset(
    llama_server: ServerProcess, path: str, body: dict[str, Any]
) -> None:
    # openai 0.28 sends "stop": null for stop=None; every optional field may be null.
    nulls = dict.fromkeys(("stop", "n", "temperature", "top_p", "logit_bias", "user", "seed"))
    response = _post(llama_server, path, {**body, **nulls, "max_tokens": 3})
    assert response.status_code == 200, response.text
    check_response(response)


def test_null_prompt_is_the_default_prompt(llama_server: ServerProcess) -> None:
    response = _post(llama_server, "/completions", {**COMPLETION, "prompt": None})
    assert response.status_code == 200, response.text
    choice = check_response(response).json["choices"][0]
    assert choice["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize(
    ("path", "raw", "param"),
    [
        (
            "/chat/completions",
            '{"model": "%s", "messages": [{"role": "user", "content": "a\\ud800b"}]}',
            "messages[0].content",
        ),
        ("/completions", '{"model": "%s", "prompt": ["ok", "\\udfff"]}', "prompt[1]"),
        ("/embeddings", '{"model": "%s", "input": "\\ud83d"}', "input"),
        ("/chat/completions", '{"model": "\\ud800%s", "messages": []}', "model"),
    ],
)
def test_lone_surrogates_are_a_400_naming_the_param(
    llama_server: ServerProcess, path: str, raw: str, param: str
) -> None:
    model = "text-embedding-ada-002" if path == "/embeddings" else LLAMA_MODEL
    error = _error(_post(llama_server, path, (raw % model).encode()), 400)
    assert error["param"] == param
    assert error["code"] == "invalid_value"
    assert "lone surrogate" in error["message"] and param in error["message"]


def test_a_whole_surrogate_pair_is_fine(llama_server: ServerProcess) -> None:
    raw = f'{{"model": "{LLAMA_MODEL}", "prompt": "\\ud83c\\udf09", "max_tokens": 2}}'
    assert _post(llama_server, "/completions", raw.encode()).status_code == 200


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 1000 + b"]" * 1000,  # deeper than Python's parser can recurse
        b'{"model": "m", "messages": ' + b"[" * 5000,
        b'{"model": "m", "tools": [' + b'{"a": ' * 100 + b"1" + b"}" * 100 + b"]}",
        b'{"model": "m", "max_tokens": ' + b"9" * 5000 + b"}",  # past int parsing's limit
        b'{"model": "m", "temperature": NaN}',
        b'{"model": "m", "temperature": -Infinity}',
    ],
    ids=["1000-deep", "5000-open", "100-deep-tools", "5000-digits", "nan", "infinity"],
)
def test_json_python_would_choke_on_is_a_parse_error(
    llama_server: ServerProcess, raw: bytes
) -> None:
    for path in ("/chat/completions", "/completions", "/embeddings"):
        error = _error(_post(llama_server, path, raw), 400)
        assert error["type"] == "invalid_request_error"
        assert error["message"].startswith("We could not parse the JSON body")


def test_empty_content_array_is_refused(llama_server: ServerProcess) -> None:
    body = {**CHAT, "messages": [{"role": "user", "content": []}]}
    error = _error(_post(llama_server, "/chat/completions", body), 400)
    assert error["param"] == "messages[0].content"
    assert error["code"] == "empty_array"


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json"])
def test_a_keyed_server_serves_no_api_docs(llama_server: ServerProcess, path: str) -> None:
    for headers in ({}, AUTH):
        response = httpx.get(f"{llama_server.root_url}{path}", headers=headers, timeout=30)
        error = _error(response, 404)
        assert error["message"] == f"Invalid URL (GET {path})"
