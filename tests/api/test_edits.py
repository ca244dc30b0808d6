"""``POST /v1/edits`` in-process on the FakeBackend (whose "model" echoes its prompt)."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.helpers import expect_error, make_client
from kakehashi.gateway.service import EDIT_SYSTEM_PROMPT
from support.openapi import validate

EDIT_DEPRECATION = "@1688601600"  # 2023-07-06T00:00:00Z, when OpenAI deprecated /v1/edits


def edit(client: TestClient, **body: Any) -> tuple[dict[str, Any], Any]:
    response = client.post("/v1/edits", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    validate("CreateEditResponse", data)
    return data, response.headers


def test_the_old_response_shape(client: TestClient) -> None:
    data, headers = edit(
        client,
        model="text-davinci-edit-001",
        input="What day of the wek is it?",
        instruction="Fix the spelling mistakes.",
    )
    assert set(data) == {"object", "created", "choices", "usage"}
    assert data["object"] == "edit" and isinstance(data["created"], int)
    [choice] = data["choices"]
    assert set(choice) == {"text", "index", "finish_reason"} and choice["index"] == 0
    # The echo model repeats the prompt: the instruction-following chat prompt that was built.
    assert EDIT_SYSTEM_PROMPT in choice["text"]
    assert "Instruction: Fix the spelling mistakes." in choice["text"]
    assert "What day of the wek is it?" in choice["text"]
    usage = data["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert headers["deprecation"] == EDIT_DEPRECATION
    assert headers["link"] == '</v1/models/gpt-4>; rel="successor-version"'
    assert "sunset" not in headers  # kakehashi keeps the edit models


def test_any_chat_model_edits_and_n_choices(client: TestClient) -> None:
    data, headers = edit(client, model="fake-model", instruction="Shout.", n=3, temperature=0)
    assert [c["index"] for c in data["choices"]] == [0, 1, 2]
    assert headers["deprecation"] == EDIT_DEPRECATION
    assert headers["link"] == '</v1/chat/completions>; rel="successor-version"'
    code, _ = edit(client, model="code-davinci-edit-001", instruction="Add types.", input="x = 1")
    assert "x = 1" in code["choices"][0]["text"]


@pytest.mark.parametrize(
    ("body", "status", "param"),  # an unknown model is a 404 with a null param, as OpenAI's
    [
        ({"model": "fake-model"}, 400, "instruction"),
        ({"instruction": "x"}, 400, "model"),
        ({"model": "fake-model", "instruction": 3}, 400, "instruction"),
        ({"model": "fake-model", "instruction": "x", "n": 21}, 400, "n"),
        ({"model": "fake-model", "instruction": "x", "temperature": 3}, 400, "temperature"),
        ({"model": "fake-model", "instruction": "x", "top_p": -1}, 400, "top_p"),
        ({"model": "nope", "instruction": "x"}, 404, None),
    ],
)
def test_errors_keep_the_envelope_and_the_header(
    client: TestClient, body: dict[str, Any], status: int, param: str | None
) -> None:
    response = client.post("/v1/edits", json=body)
    assert expect_error(response, status)["param"] == param
    assert response.headers["deprecation"] == EDIT_DEPRECATION


def test_edit_models_are_not_chat_models(client: TestClient) -> None:
    chat = {"model": "text-davinci-edit-001", "messages": [{"role": "user", "content": "hi"}]}
    error = expect_error(client.post("/v1/chat/completions", json=chat), 404)
    assert error["message"].startswith("This is not a chat model")


def test_no_endpoint_header_before_the_deprecation() -> None:
    with make_client(now=date(2023, 1, 1)) as client:
        _, headers = edit(client, model="fake-model", instruction="x")
        assert "deprecation" not in headers
