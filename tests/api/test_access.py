"""Per-key access tiers and allow-lists: a model a key may not use does not exist for it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.helpers import chat_body, expect_error, make_client
from kakehashi.backends.fake import FAKE_MODEL_ID
from kakehashi.gateway.builtin import openai_name_specs
from kakehashi.settings import Settings
from support.openapi import validate

FREE, PAID, OPEN, LISTED = "sk-free-0000", "sk-paid-0000", "sk-open-0000", "sk-list-0000"
SETTINGS: dict[str, Any] = {
    "api_keys": [f"{FREE}:free", f"{PAID}:tier-1", OPEN],
    "keys": [{"key": LISTED, "tier": "tier-5", "models": ["gpt-4"], "name": "listed-key"}],
    "models": [
        {"id": "gpt-4", "serves": FAKE_MODEL_ID, "min_tier": "tier-1", "owned_by": "openai"},
        {"id": "tier-2-only", "serves": FAKE_MODEL_ID, "tiers": ["tier-2"]},
    ],
}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with make_client(**SETTINGS) as test_client:
        yield test_client


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def visible(client: TestClient, key: str) -> list[str]:
    body = client.get("/v1/models", headers=auth(key)).json()
    validate("ListModelsResponse", body)
    return [card["id"] for card in body["data"]]


def test_listing_depends_on_the_key(client: TestClient) -> None:
    # The edit models and the OpenAI names the catalog answers by default, but for gpt-4,
    # which the settings configure (and restrict) themselves.
    defaults = [spec.id for spec in openai_name_specs(Settings(**SETTINGS).models)]
    assert "gpt-4" not in defaults and "gpt-4o" in defaults
    builtin = ["text-davinci-edit-001", "code-davinci-edit-001", *defaults]
    assert visible(client, FREE) == [FAKE_MODEL_ID, *builtin]
    assert visible(client, PAID) == [FAKE_MODEL_ID, *builtin, "gpt-4"]
    assert visible(client, OPEN) == [FAKE_MODEL_ID, *builtin, "gpt-4", "tier-2-only"]
    assert visible(client, LISTED) == ["gpt-4"]


@pytest.mark.parametrize(
    ("key", "model"), [(FREE, "gpt-4"), (PAID, "tier-2-only"), (LISTED, FAKE_MODEL_ID)]
)
def test_a_gated_model_looks_exactly_like_an_unknown_one(
    client: TestClient, key: str, model: str
) -> None:
    def errors(name: str) -> list[tuple[int, dict[str, Any]]]:
        responses = [
            client.get(f"/v1/models/{name}", headers=auth(key)),
            client.post("/v1/chat/completions", json=chat_body(model=name), headers=auth(key)),
            client.post("/v1/completions", json={"model": name, "prompt": "x"}, headers=auth(key)),
            client.post("/v1/edits", json={"model": name, "instruction": "x"}, headers=auth(key)),
        ]
        return [(r.status_code, expect_error(r, 404)) for r in responses]

    gated = errors(model)
    unknown = errors("no-such-model")
    for (status, error), (unknown_status, unknown_error) in zip(gated, unknown, strict=True):
        assert status == unknown_status == 404  # never 403
        assert error == {
            **unknown_error,
            "message": unknown_error["message"].replace("no-such-model", model),
        }
        assert error["message"] == (
            f"The model `{model}` does not exist or you do not have access to it."
        )


@pytest.mark.parametrize("key", [PAID, OPEN, LISTED])
def test_a_key_with_access_uses_the_gated_model(client: TestClient, key: str) -> None:
    card = client.get("/v1/models/gpt-4", headers=auth(key)).json()
    validate("Model", card)
    assert card == {
        "id": "gpt-4",
        "object": "model",
        "created": card["created"],
        "owned_by": "openai",
        "context_window": 1024,  # the fake backend's, which answers gpt-4 here
        "max_model_len": 1024,
    }
    response = client.post("/v1/chat/completions", json=chat_body(model="gpt-4"), headers=auth(key))
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "gpt-4"


def test_unknown_keys_still_401(client: TestClient) -> None:
    error = expect_error(client.get("/v1/models", headers=auth("sk-nobody-00")), 401)
    assert error["code"] == "invalid_api_key"
    # the tier suffix is not part of the key
    assert expect_error(client.get("/v1/models", headers=auth(f"{PAID}:tier-1")), 401)


def test_keys_from_the_environment_carry_tiers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAKEHASHI_API_KEYS", f"{FREE}:free,{OPEN}")
    settings = Settings.load(models=SETTINGS["models"])
    assert [(k.key, k.tier) for k in settings.all_keys()] == [(FREE, "free"), (OPEN, None)]
    with make_client(**settings.model_dump(include={"api_keys", "models"})) as client:
        assert "gpt-4" not in visible(client, FREE)
        assert "gpt-4" in visible(client, OPEN)
