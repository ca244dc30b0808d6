"""One Chatbot reaches every provider, each stood for by a local fake server at an injected base
URL; errors in each provider's shape come out as clear exceptions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kakehashi.client import Chatbot, ClientError, ModelNotFound, Trim
from support.fake_provider import FakeProviders, run_fake_providers

KEYS = {
    "OPENAI_API_KEY": "sk-openai",
    "GOOGLE_API_KEY": "g-key",
    "XAI_API_KEY": "x-key",
    "PLAMO_API_KEY": "p-key",
}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProviders]:
    with run_fake_providers() as server:
        yield server


@pytest.fixture
def env(fake: FakeProviders) -> dict[str, str]:
    fake.seen.clear()
    return {**fake.env(), **KEYS}


@pytest.mark.parametrize(
    ("model", "provider", "sent", "key"),
    [
        ("gpt-4o-mini", "openai", "gpt-4o-mini", "sk-openai"),
        ("gemini-2.0-flash", "gemini", "gemini-2.0-flash", "g-key"),
        ("grok-2-latest", "xai", "grok-2-latest", "x-key"),
        ("plamo-2.0-prime", "plamo", "plamo-2.0-prime", "p-key"),
        ("lmstudio-model", "lmstudio", "lmstudio-model", "not-needed"),
        ("llama-server/gpt-oss-20b", "llama-server", "gpt-oss-20b", "not-needed"),
        ("ollama/llama3.2", "ollama", "llama3.2", "not-needed"),
        ("tiny-llama", "kakehashi", "tiny-llama", "not-needed"),
    ],
)
@pytest.mark.parametrize("stream", [True, False])
def test_each_provider_by_model_name(
    fake: FakeProviders,
    env: dict[str, str],
    model: str,
    provider: str,
    sent: str,
    key: str,
    stream: bool,
) -> None:
    bot = Chatbot(model, system="Be brief.", env=env, stream=stream)
    assert bot.chat("hello there") == f"{provider} says: hello there"
    (chat,) = fake.chats()
    assert (chat.provider, chat.authorization) == (provider, f"Bearer {key}")
    assert chat.body is not None and chat.body["model"] == sent
    assert chat.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello there"},
    ]
    assert bot.usage.last is not None and bot.usage.last.completion_tokens == 3


def test_provider_argument_and_keys_from_dotenv(
    fake: FakeProviders, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.seen.clear()
    for var in ("XAI_API_KEY", "XAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / ".env").write_text(
        f"XAI_API_KEY=from-dotenv\nXAI_BASE_URL={fake.base_url('xai')}\n"
    )
    monkeypatch.chdir(tmp_path)
    bot = Chatbot("my-custom-model", provider="xai")
    assert bot.chat("hi") == "xai says: hi"
    assert fake.chats()[0].authorization == "Bearer from-dotenv"


def test_first_listed_model_when_none_given(fake: FakeProviders, env: dict[str, str]) -> None:
    bot = Chatbot(env=env)
    bot.chat("hi")
    assert fake.chats()[0].body["model"] == "first-model"  # type: ignore[index]


@pytest.mark.parametrize("provider", ["openai", "gemini", "xai", "plamo", "ollama"])
def test_errors_in_each_providers_shape_are_clear(env: dict[str, str], provider: str) -> None:
    bot = Chatbot("missing", provider=provider, env=env)
    with pytest.raises(ClientError) as caught:
        bot.chat("hi")
    assert caught.value.status == 404
    assert "The model `missing` does not exist" in str(caught.value)
    assert isinstance(caught.value, ModelNotFound)
    assert bot.messages == []  # the failed turn is not kept


def test_unknown_window_drops_turns_when_the_server_refuses(
    fake: FakeProviders, env: dict[str, str]
) -> None:
    trims: list[Trim] = []
    bot = Chatbot("small-window", provider="ollama", env=env, on_trim=trims.append)
    for turn in range(8):
        bot.chat(f"message number {turn} " + "x" * 10)
    assert trims and all(t.context_window is None and t.dropped == 1 for t in trims)
    assert "the model's context window" in trims[0].describe()
    refused = [s for s in fake.chats() if s.body and _chars(s.body) > 200]
    assert len(refused) == len(trims)


def _chars(body: dict) -> int:
    return sum(len(m["content"]) for m in body["messages"])
