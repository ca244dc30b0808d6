"""Every error a client can provoke: OpenAI's status, envelope, type, code and param.

Each body is validated against ``ErrorResponse``; a 422 or a 500 is always a failure.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from e2e.common import API_KEY, LLAMA_MODEL, MAX_MODEL_LEN, MESSAGES
from support.contract import check_response
from support.server import ServerProcess

CHAT = "/chat/completions"
COMPLETIONS = "/completions"


@pytest.fixture(scope="module")
def http(llama_server: ServerProcess) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=llama_server.base_url, headers=headers, timeout=60) as client:
        yield client


def expect_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """Assert the status and the envelope; return ``error``."""
    assert response.status_code == status, (
        f"expected {status}, got {response.status_code}: " + (response.text[:500])
    )
    return check_response(response).json["error"]


def chat_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": LLAMA_MODEL, "messages": MESSAGES, "max_tokens": 4}
    body.update(overrides)
    return {key: value for key, value in body.items() if value is not _DROP}


_DROP = object()


@dataclass(frozen=True)
class BadRequest:
    """A request the server must refuse with 400 invalid_request_error."""

    id: str
    path: str
    body: dict[str, Any]
    param: str  # a regular expression the error's param must match in full


BAD_REQUESTS = [
    BadRequest("missing-messages", CHAT, chat_body(messages=_DROP), "messages"),
    BadRequest("missing-model", CHAT, chat_body(model=_DROP), "model"),
    BadRequest("messages-not-a-list", CHAT, chat_body(messages="hi"), "messages"),
    BadRequest("empty-messages", CHAT, chat_body(messages=[]), "messages"),
    BadRequest(
        "unknown-role",
        CHAT,
        chat_body(messages=[{"role": "wizard", "content": "hi"}]),
        r"messages(\[0\](\.role)?)?",
    ),
    BadRequest(
        "message-without-role",
        CHAT,
        chat_body(messages=[{"content": "hi"}]),
        r"messages(\[0\](\.role)?)?",
    ),
    BadRequest("temperature-type", CHAT, chat_body(temperature="hot"), "temperature"),
    BadRequest("max-tokens-type", CHAT, chat_body(max_tokens="ten"), "max_tokens"),
    BadRequest("temperature-high", CHAT, chat_body(temperature=2.5), "temperature"),
    BadRequest("temperature-negative", CHAT, chat_body(temperature=-0.1), "temperature"),
    BadRequest("top-p-high", CHAT, chat_body(top_p=1.5), "top_p"),
    BadRequest("top-p-negative", CHAT, chat_body(top_p=-0.1), "top_p"),
    BadRequest("n-zero", CHAT, chat_body(n=0), "n"),
    BadRequest("n-too-large", CHAT, chat_body(n=1000), "n"),
    BadRequest("top-logprobs-21", CHAT, chat_body(logprobs=True, top_logprobs=21), "top_logprobs"),
    BadRequest(
        "top-logprobs-without-logprobs", CHAT, chat_body(top_logprobs=3), "top_logprobs|logprobs"
    ),
    BadRequest("presence-penalty-high", CHAT, chat_body(presence_penalty=2.5), "presence_penalty"),
    BadRequest(
        "frequency-penalty-low", CHAT, chat_body(frequency_penalty=-2.5), "frequency_penalty"
    ),
    BadRequest("legacy-missing-prompt", COMPLETIONS, {"model": LLAMA_MODEL}, "prompt"),
    BadRequest(
        "legacy-logprobs-6",
        COMPLETIONS,
        {"model": LLAMA_MODEL, "prompt": "hi", "logprobs": 6},
        "logprobs",
    ),
    BadRequest(
        "legacy-temperature-high",
        COMPLETIONS,
        {"model": LLAMA_MODEL, "prompt": "hi", "temperature": 3},
        "temperature",
    ),
    BadRequest("legacy-n-zero", COMPLETIONS, {"model": LLAMA_MODEL, "prompt": "hi", "n": 0}, "n"),
]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=lambda case: case.id)
def test_invalid_request(http: httpx.Client, case: BadRequest) -> None:
    error = expect_error(http.post(case.path, json=case.body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] is not None and re.fullmatch(case.param, error["param"]), error
    assert error["message"]


def _legacy(**fields: Any) -> dict[str, Any]:
    return {"model": LLAMA_MODEL, "max_tokens": 4, **fields}


ODD_BODIES = [
    (CHAT, chat_body(messages=[{"role": "user"}])),
    (CHAT, chat_body(messages=[{"role": "user", "content": 5}])),
    (CHAT, chat_body(messages=[1])),
    (CHAT, chat_body(messages=[{"role": "user", "content": [{"type": "nope"}]}])),
    (CHAT, chat_body(model=5)),
    (CHAT, chat_body(stop=5)),
    (CHAT, chat_body(logit_bias="x")),
    (CHAT, chat_body(logit_bias={"not-a-token": 1})),
    (CHAT, chat_body(logit_bias={"999999": 1})),
    (CHAT, chat_body(seed="x")),
    (CHAT, chat_body(stream_options="x")),
    (CHAT, chat_body(max_tokens=-1)),
    (CHAT, chat_body(n=True)),
    (CHAT, chat_body(logprobs="yes")),
    (COMPLETIONS, _legacy(prompt={})),
    (COMPLETIONS, _legacy(prompt=[])),
    (COMPLETIONS, _legacy(prompt=[[]])),
    (COMPLETIONS, _legacy(prompt=[-1])),
    (COMPLETIONS, _legacy(prompt=[999999])),
    (COMPLETIONS, _legacy(prompt=[[1, 2], "mixed"])),
    (COMPLETIONS, _legacy(prompt="hi", echo="yes")),
]


@pytest.mark.parametrize(("path", "body"), ODD_BODIES, ids=lambda value: str(value)[:60])
def test_odd_input_is_a_400_never_422_or_500(
    http: httpx.Client, path: str, body: dict[str, Any]
) -> None:
    error = expect_error(http.post(path, json=body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["message"]


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_malformed_json(http: httpx.Client, path: str) -> None:
    response = http.post(
        path,
        content=b'{"model": "tiny-llama", "messages": [',
        headers={"Content-Type": "application/json"},
    )
    error = expect_error(response, 400)
    assert error["type"] == "invalid_request_error"
    assert error["message"]


def test_body_that_is_not_an_object(http: httpx.Client) -> None:
    error = expect_error(http.post(CHAT, json=["not", "an", "object"]), 400)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (CHAT, chat_body(model="gpt-unknown")),
        (COMPLETIONS, {"model": "gpt-unknown", "prompt": "hi"}),
    ],
)
def test_unknown_model(http: httpx.Client, path: str, body: dict[str, Any]) -> None:
    error = expect_error(http.post(path, json=body), 404)
    assert error["code"] == "model_not_found"
    assert error["type"] == "invalid_request_error"
    assert error["message"] == (
        "The model `gpt-unknown` does not exist or you do not have access to it."
    )


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "sk-kakehashi-e2e"}],
    ids=["missing", "wrong", "not-bearer"],
)
@pytest.mark.parametrize("path", [CHAT, "/models"])
def test_bad_api_key(llama_server: ServerProcess, headers: dict[str, str], path: str) -> None:
    url = llama_server.base_url + path
    if path == CHAT:
        response = httpx.post(url, json=chat_body(), headers=headers, timeout=60)
    else:
        response = httpx.get(url, headers=headers, timeout=60)
    error = expect_error(response, 401)
    assert error["code"] == "invalid_api_key"
    assert error["type"] == "invalid_request_error"
    assert "API key" in error["message"]
    assert "sk-kakehashi-e2e" not in error["message"]  # never echo a full key


def test_sdk_maps_errors(llama_server: ServerProcess, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-unknown", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=LLAMA_MODEL, messages=MESSAGES, temperature=9)
    assert caught.value.param == "temperature"
    bad_key = openai.OpenAI(base_url=llama_server.base_url, api_key="sk-wrong", max_retries=0)
    with bad_key, pytest.raises(openai.AuthenticationError) as auth:
        bad_key.models.list()
    assert auth.value.code == "invalid_api_key"


def _long_text(words: int) -> str:
    return " ".join(f"word{i}" for i in range(words))


@pytest.mark.parametrize(
    "body",
    [
        chat_body(messages=[{"role": "user", "content": _long_text(MAX_MODEL_LEN)}]),
        chat_body(max_tokens=MAX_MODEL_LEN),
        chat_body(max_completion_tokens=MAX_MODEL_LEN, max_tokens=_DROP),
    ],
    ids=["long-prompt", "max-tokens", "max-completion-tokens"],
)
def test_context_length_exceeded(http: httpx.Client, body: dict[str, Any]) -> None:
    error = expect_error(http.post(CHAT, json=body), 400)
    assert error["code"] == "context_length_exceeded"
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "messages"
    assert str(MAX_MODEL_LEN) in error["message"]


def test_context_length_exceeded_legacy(http: httpx.Client) -> None:
    body = {"model": LLAMA_MODEL, "prompt": _long_text(MAX_MODEL_LEN), "max_tokens": 4}
    error = expect_error(http.post(COMPLETIONS, json=body), 400)
    assert error["code"] == "context_length_exceeded"
    assert error["type"] == "invalid_request_error"
    assert str(MAX_MODEL_LEN) in error["message"]


def test_prompt_that_just_fits_is_served(http: httpx.Client) -> None:
    body = chat_body(max_tokens=4)
    usage = http.post(CHAT, json=body).json()["usage"]
    room = MAX_MODEL_LEN - usage["prompt_tokens"]
    response = http.post(CHAT, json=chat_body(max_tokens=room, temperature=0, stop=_DROP))
    assert response.status_code == 200, response.text
    check_response(response)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/nowhere"), ("POST", "/v1/chat/complete"), ("GET", "/nowhere")],
)
def test_unknown_route(llama_server: ServerProcess, method: str, path: str) -> None:
    response = httpx.request(
        method, llama_server.root_url + path, headers=llama_server.auth_headers(), timeout=60
    )
    error = expect_error(response, 404)
    assert error["message"]
