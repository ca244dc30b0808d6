"""Routing a model name to a provider, its base URL and its key (env and .env files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kakehashi.client.errors import ClientError
from kakehashi.client.providers import LOCAL_KEY, environment, resolve

KEYS = {
    "OPENAI_API_KEY": "sk-openai",
    "GOOGLE_API_KEY": "g-key",
    "XAI_API_KEY": "x-key",
    "PLAMO_API_KEY": "p-key",
}


@pytest.mark.parametrize(
    ("model", "provider", "base_url", "key", "sent"),
    [
        ("gpt-4o", "openai", "https://api.openai.com/v1", "sk-openai", "gpt-4o"),
        ("chatgpt-4o-latest", "openai", "https://api.openai.com/v1", "sk-openai", None),
        (
            "gemini-2.0-flash",
            "gemini",
            "https://generativelanguage.googleapis.com/v1beta/openai",
            "g-key",
            None,
        ),
        ("grok-2-latest", "xai", "https://api.x.ai/v1", "x-key", None),
        ("plamo-2.0-prime", "plamo", "https://api.platform.preferredai.jp/v1", "p-key", None),
        ("lmstudio-qwen", "lmstudio", "http://localhost:1234/v1", LOCAL_KEY, None),
        ("ollama/llama3.2", "ollama", "http://localhost:11434/v1", LOCAL_KEY, "llama3.2"),
        ("llama-server/x", "llama-server", "http://localhost:8080/v1", LOCAL_KEY, "x"),
        ("Qwen/Qwen2.5-0.5B", "kakehashi", "http://127.0.0.1:8000/v1", LOCAL_KEY, None),
        ("tiny-llama", "kakehashi", "http://127.0.0.1:8000/v1", LOCAL_KEY, None),
    ],
)
def test_model_names_route_to_their_provider(
    model: str, provider: str, base_url: str, key: str, sent: str | None
) -> None:
    endpoint = resolve(model, env=KEYS)
    assert endpoint.provider.name == provider
    assert endpoint.base_url == base_url
    assert endpoint.api_key == key
    assert endpoint.model == (sent or model)


def test_explicit_provider_base_url_and_key_win() -> None:
    endpoint = resolve("gpt-3.5-turbo", provider="kakehashi", env=KEYS)
    assert (endpoint.provider.name, endpoint.model) == ("kakehashi", "gpt-3.5-turbo")
    endpoint = resolve("kakehashi/gpt-4", provider="KAKEHASHI", env=KEYS)
    assert endpoint.model == "gpt-4"
    endpoint = resolve("gpt-4", base_url="http://127.0.0.1:9/v1/", env={})
    assert (endpoint.base_url, endpoint.api_key) == ("http://127.0.0.1:9/v1", LOCAL_KEY)
    endpoint = resolve("grok-3", api_key="given", env={"XAI_BASE_URL": "http://127.0.0.1:5/x"})
    assert (endpoint.base_url, endpoint.api_key) == ("http://127.0.0.1:5/x", "given")
    assert resolve(None, env={}).provider.name == "kakehashi"
    assert resolve(None, env={}).model is None


def test_missing_key_and_unknown_provider_are_clear() -> None:
    with pytest.raises(ClientError, match="Gemini needs an API key: set GOOGLE_API_KEY or GEMINI"):
        resolve("gemini-1.5-pro", env={})
    with pytest.raises(ClientError, match="Unknown provider 'azure'; known providers: openai"):
        resolve("x", provider="azure", env={})


def test_keys_from_a_dotenv_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("XAI_API_KEY=from-file\nPLAMO_API_KEY=file-plamo\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("XAI_API_KEY", raising=False)
    monkeypatch.setenv("PLAMO_API_KEY", "from-env")
    env = environment()
    assert resolve("grok-2", env=env).api_key == "from-file"
    assert resolve("plamo-2.0-prime", env=env).api_key == "from-env"  # the environment wins
    assert environment(tmp_path / "missing.env").get("XAI_API_KEY") is None
