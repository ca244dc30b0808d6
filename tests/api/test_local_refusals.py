"""What the local engine cannot do is refused with a clear 400, not silently ignored."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.helpers import chat_body, expect_error

CHAT = "/v1/chat/completions"
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, IMAGE]}]},
            "messages[0].content",
            "type 'image_url' is not supported",
        ),
        ({"response_format": {"type": "json_object"}}, "response_format", "json_object"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format",
            "json_schema",
        ),
        ({"modalities": ["text", "audio"]}, "modalities", "cannot produce audio"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio", "cannot produce audio"),
    ],
)
def test_unsupported_features_are_a_400(
    client: TestClient, fields: dict[str, Any], param: str, words: str
) -> None:
    for stream in (False, True):
        response = client.post(CHAT, json=chat_body(stream=stream, **fields))
        error = expect_error(response, 400)
        assert error["param"] == param
        assert words in error["message"]


def test_text_parts_and_harmless_fields_are_served(client: TestClient) -> None:
    parts = [{"type": "text", "text": "hello"}, {"type": "text", "text": "there"}]
    body = chat_body(
        messages=[{"role": "user", "content": parts}],
        response_format={"type": "text"},
        metadata={"team": "a"},
        store=False,
        parallel_tool_calls=True,
        max_tokens=200,
    )
    response = client.post(CHAT, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "user: hello\nthere\nassistant:"
