"""Lifecycle and per-key access on a real server: a settings file, ``KEY:TIER`` keys and
``KAKEHASHI_NOW``, driven by the official SDK."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from e2e.common import LLAMA_MODEL, MESSAGES
from support.contract import sdk_http_client
from support.server import ServerProcess, run_server

FREE, PAID = "sk-e2e-free-key", "sk-e2e-paid-key"
CONFIG = f"""
[[models]]
id = "gpt-4-0613"
serves = "{LLAMA_MODEL}"
owned_by = "openai"
min_tier = "tier-1"
stable_alias = "gpt-4"
stable_since = 2023-06-27
"""


@pytest.fixture(scope="module")
def server(
    tiny_llama_dir: Path, server_data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    config = tmp_path_factory.mktemp("config") / "kakehashi.toml"
    config.write_text(CONFIG)
    with run_server(
        tiny_llama_dir,
        data_dir=server_data_dir,
        served_model_name=LLAMA_MODEL,
        api_keys=[f"{FREE}:free", f"{PAID}:tier-1"],
        max_model_len=256,
        extra_args=["--config", str(config), "--no-embeddings"],
        env={"KAKEHASHI_NOW": "2023-12-01"},
    ) as running:
        yield running


def sdk(server: ServerProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=server.base_url, api_key=key, max_retries=0, http_client=sdk_http_client()
    )


def test_deprecated_model_is_served_with_headers_and_logged_once(server: ServerProcess) -> None:
    assert "lifecycle clock fixed at 2023-12-01" in server.output()
    with sdk(server, FREE) as client:
        _check_deprecated(client)
    assert server.output().count("uses `text-davinci-003`") == 1


def _check_deprecated(client: openai.OpenAI) -> None:
    for _ in range(2):
        raw = client.completions.with_raw_response.create(
            model="text-davinci-003", prompt="The bridge", max_tokens=3, temperature=0
        )
        assert raw.headers["deprecation"] == "@1688601600"
        assert raw.headers["sunset"] == "Thu, 04 Jan 2024 00:00:00 GMT"
        assert raw.headers["link"] == '</v1/models/gpt-3.5-turbo-instruct>; rel="successor-version"'
        assert raw.parse().model == "text-davinci-003"
    card = client.models.retrieve("text-davinci-003")
    assert card.to_dict()["shutdown_date"] == "2024-01-04"


def test_gated_model_is_invisible_to_a_free_key(server: ServerProcess) -> None:
    with sdk(server, FREE) as client:
        _check_invisible(client)


def _check_invisible(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert LLAMA_MODEL in ids and "gpt-4" not in ids and "gpt-4-0613" not in ids
    for model in ("gpt-4", "gpt-4-0613"):
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=2)
        assert caught.value.code == "model_not_found"
        assert caught.value.body["message"] == (
            f"The model `{model}` does not exist or you do not have access to it."
        )


def test_a_paid_key_uses_it_through_the_stable_alias(server: ServerProcess) -> None:
    with sdk(server, PAID) as client:
        _check_stable_alias(client)


def _check_stable_alias(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert "gpt-4" in ids and "gpt-4-0613" in ids
    response = client.chat.completions.create(
        model="gpt-4", messages=MESSAGES, max_tokens=4, temperature=0
    )
    assert response.model == "gpt-4-0613"
    direct = client.chat.completions.create(
        model=LLAMA_MODEL, messages=MESSAGES, max_tokens=4, temperature=0
    )
    assert response.choices[0].message.content == direct.choices[0].message.content
