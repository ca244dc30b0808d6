"""Which OpenAI-compatible server a model name goes to, at which base URL, with which key.

One table covers the providers our users name: OpenAI, Gemini's OpenAI endpoint, xAI, PLaMo,
LM Studio, llama-server, Ollama and a kakehashi server. A model is routed by an explicit
``provider``, by a ``provider/`` prefix (``ollama/llama3.2``) or by its name (``gemini-*``,
``grok-*``, ``plamo-*``, ``gpt-*``...); anything else goes to kakehashi. Keys and base URLs come
from the environment or a ``.env`` file; every base URL can be overridden by a variable
(``GEMINI_BASE_URL``...), which is also how tests point each provider at a local server.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kakehashi.client.errors import ClientError

LOCAL_KEY = "not-needed"
"""What the SDK sends as the key to local servers that want none (it requires one)."""


@dataclass(frozen=True, slots=True)
class Provider:
    """An OpenAI-compatible service: where it listens and how it is authenticated."""

    name: str
    title: str
    base_url: str
    key_vars: tuple[str, ...]
    base_url_var: str
    key_required: bool = True
    pattern: str | None = None  # a model name matching this regex goes here

    def matches(self, model: str) -> bool:
        """Whether ``model`` names one of this provider's models."""
        return self.pattern is not None and re.search(self.pattern, model) is not None


PROVIDERS: tuple[Provider, ...] = (
    Provider(
        "openai",
        "OpenAI",
        "https://api.openai.com/v1",
        ("OPENAI_API_KEY",),
        "OPENAI_BASE_URL",
        pattern=r"^(gpt-|chatgpt-|o\d|text-|davinci|babbage|curie|ada\b|code-)",
    ),
    Provider(
        "gemini",
        "Gemini",
        "https://generativelanguage.googleapis.com/v1beta/openai/",
        ("GOOGLE_API_KEY", "GEMINI_API_KEY"),
        "GEMINI_BASE_URL",
        pattern=r"gemini",
    ),
    Provider("xai", "xAI", "https://api.x.ai/v1", ("XAI_API_KEY",), "XAI_BASE_URL", pattern="grok"),
    Provider(
        "plamo",
        "PLaMo",
        "https://api.platform.preferredai.jp/v1",
        ("PLAMO_API_KEY",),
        "PLAMO_BASE_URL",
        pattern="plamo",
    ),
    Provider(
        "lmstudio",
        "LM Studio",
        "http://localhost:1234/v1",
        ("LMSTUDIO_API_KEY",),
        "LMSTUDIO_BASE_URL",
        key_required=False,
        pattern="lmstudio",
    ),
    Provider(
        "llama-server",
        "llama-server",
        "http://localhost:8080/v1",
        ("LLAMA_API_KEY",),
        "LLAMA_SERVER_BASE_URL",
        key_required=False,
    ),
    Provider(
        "ollama",
        "Ollama",
        "http://localhost:11434/v1",
        ("OLLAMA_API_KEY",),
        "OLLAMA_BASE_URL",
        key_required=False,
    ),
    Provider(
        "kakehashi",
        "kakehashi",
        "http://127.0.0.1:8000/v1",
        ("KAKEHASHI_API_KEY",),
        "KAKEHASHI_BASE_URL",
        key_required=False,
    ),
)
DEFAULT_PROVIDER = "kakehashi"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where one conversation goes: the provider, its base URL and key, and the model id to
    send (``None``: the first model the server lists)."""

    provider: Provider
    base_url: str
    api_key: str
    model: str | None


def provider_named(name: str) -> Provider:
    """The provider called ``name``; a :class:`ClientError` listing the known ones otherwise."""
    for provider in PROVIDERS:
        if provider.name == name.lower():
            return provider
    known = ", ".join(p.name for p in PROVIDERS)
    raise ClientError(f"Unknown provider {name!r}; known providers: {known}.", param="provider")


def provider_for(model: str | None) -> tuple[Provider, str | None]:
    """The provider a model name routes to, and the model id to send it."""
    if model is None:
        return provider_named(DEFAULT_PROVIDER), None
    prefix, slash, rest = model.partition("/")
    if slash and rest:
        for provider in PROVIDERS:
            if provider.name == prefix.lower():
                return provider, rest
    for provider in PROVIDERS:
        if provider.matches(model):
            return provider, model
    return provider_named(DEFAULT_PROVIDER), model


def environment(dotenv: str | Path | None = None) -> dict[str, str]:
    """The process environment over the ``.env`` file (``dotenv``, else the nearest one from
    the working directory up); the environment wins, as python-dotenv does by default."""
    from dotenv import dotenv_values, find_dotenv

    path = str(dotenv) if dotenv is not None else find_dotenv(usecwd=True)
    values = {k: v for k, v in dotenv_values(path).items() if v is not None} if path else {}
    return {**values, **os.environ}


def resolve(
    model: str | None = None,
    *,
    provider: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Endpoint:
    """Where ``model`` goes. An explicit ``base_url`` wins over the provider's (and then a key
    is optional); ``env`` defaults to :func:`environment`."""
    env = environment() if env is None else env
    if provider is not None:
        chosen, model_id = provider_named(provider), model
        if model is not None and model.lower().startswith(chosen.name + "/"):
            model_id = model[len(chosen.name) + 1 :]
    else:
        chosen, model_id = provider_for(model)
    url = base_url or env.get(chosen.base_url_var) or chosen.base_url
    key = api_key or next((env[v] for v in chosen.key_vars if env.get(v)), None)
    if key is None:
        if chosen.key_required and base_url is None:
            names = " or ".join(chosen.key_vars)
            raise ClientError(
                f"{chosen.title} needs an API key: set {names} in the environment or in a "
                ".env file, or pass api_key.",
                param="api_key",
            )
        key = LOCAL_KEY
    return Endpoint(chosen, url.rstrip("/"), key, model_id)
