"""Model lifecycle over HTTP: each date boundary, headers, listing, the migration table,
stable-alias upgrades and the once-per-key warning, on an app whose clock the test sets."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.helpers import expect_error, sse_events
from kakehashi.api.app import create_app
from kakehashi.backends.embedding import LocalEmbeddingBackend
from kakehashi.backends.fake import FAKE_MODEL_ID, FakeBackend
from kakehashi.gateway.builtin import migration_table
from kakehashi.settings import Settings
from support.openapi import validate

ANNOUNCED = "@1688601600"  # 2023-07-06T00:00:00Z
SUNSET = "Thu, 04 Jan 2024 00:00:00 GMT"

CONFIG = """
api_keys = ["sk-lifecycle-a", "sk-lifecycle-b"]

[[models]]
id = "chat-0301"
serves = "fake-model"
stable_alias = "chat"
stable_since = 2023-03-01
deprecated_on = 2023-06-13
shutdown_on = 2023-09-13
replacement = "chat-0613"

[[models]]
id = "chat-0613"
serves = "fake-model"
stable_alias = "chat"
stable_since = 2023-06-27
"""


class Calendar:
    """A clock the test moves."""

    def __init__(self, day: date) -> None:
        self.day = day

    def __call__(self) -> date:
        return self.day


@pytest.fixture(scope="module")
def calendar() -> Calendar:
    return Calendar(date(2023, 1, 1))


@pytest.fixture(scope="module")
def client(calendar: Calendar, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    config = tmp_path_factory.mktemp("config") / "kakehashi.toml"
    config.write_text(CONFIG)
    settings = Settings.load(config)
    embedder = LocalEmbeddingBackend.from_settings(settings)
    assert embedder is not None, "the `embeddings` extra is not installed"
    app = create_app(settings, backends=[FakeBackend(), embedder], clock=calendar)
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as test_client:
        test_client.headers["Authorization"] = "Bearer sk-lifecycle-a"
        yield test_client


def complete(client: TestClient, model: str, **extra: Any) -> Any:
    return client.post("/v1/completions", json={"model": model, "prompt": "hi", **extra})


def listed(client: TestClient) -> dict[str, dict[str, Any]]:
    body = client.get("/v1/models").json()
    validate("ListModelsResponse", body)
    return {card["id"]: card for card in body["data"]}


def test_before_deprecation_served_normally(client: TestClient, calendar: Calendar) -> None:
    calendar.day = date(2023, 7, 5)
    response = complete(client, "text-davinci-003")
    assert response.status_code == 200
    validate("CreateCompletionResponse", response.json())
    assert response.json()["model"] == "text-davinci-003"
    for header in ("deprecation", "sunset", "link"):
        assert header not in response.headers
    card = listed(client)["text-davinci-003"]
    assert "shutdown_date" not in card


@pytest.mark.parametrize("day", [date(2023, 7, 6), date(2024, 1, 3)])
def test_between_deprecation_and_shutdown(
    client: TestClient, calendar: Calendar, day: date
) -> None:
    calendar.day = day
    response = complete(client, "text-davinci-003")
    assert response.status_code == 200
    assert response.headers["deprecation"] == ANNOUNCED
    assert response.headers["sunset"] == SUNSET
    assert (
        response.headers["link"] == '</v1/models/gpt-3.5-turbo-instruct>; rel="successor-version"'
    )
    streamed = complete(client, "text-davinci-003", stream=True)
    assert streamed.headers["deprecation"] == ANNOUNCED
    assert sse_events(streamed.text)[-1] == "[DONE]"
    card = listed(client)["text-davinci-003"]
    assert card["shutdown_date"] == "2024-01-04"
    retrieved = client.get("/v1/models/text-davinci-003").json()
    validate("Model", retrieved)
    assert retrieved == card


def test_after_shutdown_404_names_the_replacement(client: TestClient, calendar: Calendar) -> None:
    calendar.day = date(2024, 1, 4)
    error = expect_error(complete(client, "text-davinci-003"), 404)
    assert error == {
        "message": "The model `text-davinci-003` has been deprecated and was shut down on "
        "2024-01-04; use `gpt-3.5-turbo-instruct` instead.",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }
    assert "text-davinci-003" not in listed(client)
    retrieve = expect_error(client.get("/v1/models/text-davinci-003"), 404)
    assert retrieve["code"] == "model_not_found" and "gpt-3.5-turbo-instruct" in retrieve["message"]


def test_the_whole_migration_table(client: TestClient, calendar: Calendar) -> None:
    rows = migration_table()
    calendar.day = date(2024, 1, 3)
    visible = listed(client)
    assert {row.model for row in rows} <= set(visible)
    for row in rows:
        assert client.get(f"/v1/models/{row.model}").status_code == 200
    embedded = client.post(
        "/v1/embeddings", json={"model": "text-search-ada-doc-001", "input": "old code"}
    )
    assert embedded.status_code == 200 and embedded.json()["model"] == "text-search-ada-doc-001"
    assert (
        embedded.headers["link"] == '</v1/models/text-embedding-ada-002>; rel="successor-version"'
    )

    calendar.day = date(2024, 1, 4)
    visible = listed(client)
    for row in rows:
        if row.endpoint == "edits":  # kakehashi keeps the Edits API and its models
            assert row.model in visible
            continue
        assert row.model not in visible
        error = expect_error(client.get(f"/v1/models/{row.model}"), 404)
        assert f"use `{row.replacement}` instead" in error["message"]
    gone = client.post("/v1/embeddings", json={"model": "text-search-ada-doc-001", "input": "x"})
    assert "use `text-embedding-ada-002` instead" in expect_error(gone, 404)["message"]
    # ... and the replacement named for embeddings is served here.
    assert (
        client.post(
            "/v1/embeddings", json={"model": "text-embedding-ada-002", "input": "x"}
        ).status_code
        == 200
    )


def test_stable_alias_upgrades_on_its_date(client: TestClient, calendar: Calendar) -> None:
    chat = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    calendar.day = date(2023, 6, 26)
    response = client.post("/v1/chat/completions", json=chat)
    assert response.json()["model"] == "chat-0301"  # the dated snapshot, as OpenAI answers
    assert response.headers["sunset"] == "Wed, 13 Sep 2023 00:00:00 GMT"
    assert listed(client)["chat"]["created"] == listed(client)["chat-0301"]["created"]

    calendar.day = date(2023, 6, 27)
    response = client.post("/v1/chat/completions", json=chat)
    assert response.json()["model"] == "chat-0613"
    assert "deprecation" not in response.headers
    assert client.get("/v1/models/chat").json()["id"] == "chat"

    calendar.day = date(2023, 9, 13)
    assert set(listed(client)) >= {"chat", "chat-0613"} and "chat-0301" not in listed(client)
    assert expect_error(
        client.post("/v1/chat/completions", json={**chat, "model": "chat-0301"}), 404
    )


def test_deprecation_warning_is_logged_once_per_key(
    client: TestClient, calendar: Calendar, caplog: pytest.LogCaptureFixture
) -> None:
    calendar.day = date(2023, 12, 1)
    with caplog.at_level(logging.WARNING, logger="kakehashi.gateway.service"):
        for key in ("sk-lifecycle-a", "sk-lifecycle-b", "sk-lifecycle-a", "sk-lifecycle-b"):
            response = client.post(
                "/v1/completions",
                json={"model": "text-curie-001", "prompt": "x", "max_tokens": 1},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert response.status_code == 200
    warnings = [r.getMessage() for r in caplog.records if "text-curie-001" in r.getMessage()]
    assert len(warnings) == 2
    assert "deprecated until 2024-01-04 → gpt-3.5-turbo-instruct" in warnings[0]
    assert {w.split()[1] for w in warnings} == {"sk-li***-a", "sk-li***-b"}


def test_settable_clock_from_settings(tmp_path: Path) -> None:
    with TestClient(
        create_app(Settings(now=date(2023, 12, 1)), backend=FakeBackend()),
        base_url="http://127.0.0.1",
    ) as early:
        assert complete(early, "text-davinci-003").headers["deprecation"] == ANNOUNCED
    with TestClient(
        create_app(Settings(), backend=FakeBackend()), base_url="http://127.0.0.1"
    ) as today:
        assert complete(today, "text-davinci-003").status_code == 404
        assert complete(today, FAKE_MODEL_ID).status_code == 200


def test_the_codex_models_seed_code_names_are_retired_with_a_replacement(
    client: TestClient, calendar: Calendar
) -> None:
    # davinci-codex, as in the founding blog post's 0.28 code, was shut down on 2023-03-23.
    calendar.day = date(2023, 3, 23)
    error = expect_error(complete(client, "davinci-codex"), 404)
    assert error["code"] == "model_not_found" and error["param"] is None
    assert "shut down on 2023-03-23" in error["message"]
    assert "use `gpt-3.5-turbo-instruct` instead" in error["message"]
    calendar.day = date(2023, 3, 22)
    assert complete(client, "code-cushman-001").status_code == 200
