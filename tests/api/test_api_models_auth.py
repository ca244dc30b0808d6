"""GET /v1/models, /health and API-key authentication."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.helpers import API_KEY, chat_body, expect_error, make_client
from kakehashi.backends.fake import FAKE_MODEL_ID
from kakehashi.gateway.builtin import openai_name_specs
from support.openapi import validate


def test_list_and_retrieve_models(client: TestClient) -> None:
    body = client.get("/v1/models").json()
    validate("ListModelsResponse", body)
    # The built-in catalog adds OpenAI's two edit models (deprecated, still served by
    # /v1/edits) and the OpenAI model names it answers with the served model.
    assert [m["id"] for m in body["data"]] == [
        FAKE_MODEL_ID,
        "org/alias-model",
        "text-davinci-edit-001",
        "code-davinci-edit-001",
        *(spec.id for spec in openai_name_specs()),
    ]
    for model in body["data"]:
        response = client.get(f"/v1/models/{model['id']}")
        assert response.status_code == 200
        validate("Model", response.json())
        assert response.json() == model
    error = expect_error(client.get("/v1/models/org/other"), 404)
    assert error["code"] == "model_not_found" and error["param"] is None


def test_health(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}


@pytest.fixture
def secured() -> TestClient:
    with make_client(api_keys=[API_KEY, "sk-second-key-abcdef"]) as client:
        yield client


def test_missing_key(secured: TestClient) -> None:
    for response in (
        secured.get("/v1/models"),
        secured.post("/v1/chat/completions", json=chat_body()),
        secured.get("/v1/models", headers={"Authorization": "Basic abc"}),
        secured.get("/v1/models", headers={"Authorization": "Bearer "}),
    ):
        error = expect_error(response, 401)
        assert error["code"] == "invalid_api_key"
        assert error["message"].startswith("You didn't provide an API key.")


def test_wrong_key_is_masked(secured: TestClient) -> None:
    response = secured.get("/v1/models", headers={"Authorization": "Bearer sk-abcdefghijxy"})
    error = expect_error(response, 401)
    assert error["code"] == "invalid_api_key"
    assert error["type"] == "invalid_request_error"
    assert error["message"] == "Incorrect API key provided: sk-ab***xy."


def test_good_keys_and_open_health(secured: TestClient) -> None:
    for key in (API_KEY, "sk-second-key-abcdef"):
        headers = {"Authorization": f"Bearer {key}"}
        assert secured.get("/v1/models", headers=headers).status_code == 200
        response = secured.post("/v1/chat/completions", json=chat_body(), headers=headers)
        assert response.status_code == 200
    assert secured.get("/health").status_code == 200


def test_request_ids_are_minted_and_the_clients_echoed(client: TestClient) -> None:
    headers = {"x-request-id": "abc-123", "X-Client-Request-Id": "mine-1"}
    first = client.get("/v1/models", headers=headers)
    second = client.get("/v1/models", headers=headers)
    # The ledger keys usage by request id: a client's reused id must not be taken as ours.
    assert first.headers["x-request-id"].startswith("req_")
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    assert first.headers["x-client-request-id"] == "mine-1"
    too_long = client.get("/v1/models", headers={"X-Client-Request-Id": "x" * 513})
    assert "x-client-request-id" not in too_long.headers
