"""kakehashi's client kit, on the official ``openai`` SDK: :class:`Chatbot` for any
OpenAI-compatible server, and the pieces behind ``kakehashi chat``, ``summarize`` and
``migrate``.

Names are imported on first use, so ``kakehashi chat`` shows its prompt before the SDK loads.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kakehashi.client.chatbot import Chatbot, ChatUsage, TokenProbability, Trim, Usage
    from kakehashi.client.errors import (
        AuthenticationFailed,
        ClientError,
        ConnectionFailed,
        ContextWindowExceeded,
        ModelNotFound,
    )
    from kakehashi.client.providers import PROVIDERS, Provider, resolve

__all__ = [
    "PROVIDERS",
    "AuthenticationFailed",
    "ChatUsage",
    "Chatbot",
    "ClientError",
    "ConnectionFailed",
    "ContextWindowExceeded",
    "ModelNotFound",
    "Provider",
    "TokenProbability",
    "Trim",
    "Usage",
    "resolve",
]

_HOMES = {
    "chatbot": ("Chatbot", "ChatUsage", "TokenProbability", "Trim", "Usage"),
    "errors": (
        "AuthenticationFailed",
        "ClientError",
        "ConnectionFailed",
        "ContextWindowExceeded",
        "ModelNotFound",
    ),
    "providers": ("PROVIDERS", "Provider", "resolve"),
}


def __getattr__(name: str) -> Any:
    for module, names in _HOMES.items():
        if name in names:
            return getattr(import_module(f"kakehashi.client.{module}"), name)
    raise AttributeError(f"module 'kakehashi.client' has no attribute {name!r}")
