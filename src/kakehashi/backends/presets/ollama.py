"""Ollama's OpenAI-compatible endpoint: no ``n`` above 1, no ``logit_bias``; errors in
OpenAI's envelope with ``code: null``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kakehashi.backends.presets.base import Preset, Refusal
from kakehashi.capabilities import Capability


class Ollama(Preset):
    """localhost:11434."""

    name = "ollama"
    label = "Ollama"
    base_url = "http://localhost:11434/v1"

    def unsupported(
        self, capability: Capability, body: Mapping[str, Any], model: str
    ) -> list[Refusal]:
        refused = []
        n = body.get("n")
        if isinstance(n, int) and n > 1:
            refused.append(Refusal("n", "Ollama returns one choice"))
        if body.get("logit_bias"):
            refused.append(Refusal("logit_bias", "Ollama has no `logit_bias`"))
        return refused
