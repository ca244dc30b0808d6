"""Helpers of the API tests: building clients and requests, reading SSE and errors."""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient

from kakehashi.api.app import create_app
from kakehashi.backends.fake import FAKE_MODEL_ID, FakeBackend
from kakehashi.settings import Settings
from support.openapi import validate

API_KEY = "sk-api-test-0123456789"


def make_client(backend: FakeBackend | None = None, **settings: Any) -> TestClient:
    """A client of an app on ``backend`` (a fresh FakeBackend by default)."""
    app = create_app(Settings(**settings), backend=backend or FakeBackend())
    return TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)


def chat_body(**overrides: Any) -> dict[str, Any]:
    """A valid chat request with ``overrides`` (a value of ``None`` drops the field)."""
    body: dict[str, Any] = {
        "model": FAKE_MODEL_ID,
        "messages": [{"role": "user", "content": "hi"}],
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def sse_events(text: str) -> list[Any]:
    """The ``data:`` payloads of an SSE body (JSON decoded, ``[DONE]`` kept as a string)."""
    assert text.endswith("\n\n"), text[-100:]
    events = []
    for frame in text.split("\n\n")[:-1]:
        assert frame.startswith("data: "), frame
        payload = frame.removeprefix("data: ")
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def expect_error(response: Any, status: int) -> dict[str, Any]:
    """Assert ``status`` and an OpenAI error envelope; return its ``error``."""
    assert response.status_code == status, response.text
    body = response.json()
    validate("ErrorResponse", body)
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]
