"""xAI (Grok).

- Errors are flat: ``{"code": "Client specified an invalid argument", "error": "..."}`` or,
  newer, ``{"code": "invalid-argument", ...}``: the ``code`` is a description, not an id.
- Its reasoning models refuse ``presence_penalty``, ``frequency_penalty`` and ``stop``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from kakehashi.backends.presets.base import Preset, Problem, Refusal
from kakehashi.capabilities import Capability

REASONING_REFUSES = ("presence_penalty", "frequency_penalty", "stop")


def is_reasoning_model(model: str) -> bool:
    """grok-3-mini, grok-4 and the ``-reasoning`` variants reason; ``-non-reasoning`` ones
    do not."""
    name = model.lower()
    if "non-reasoning" in name:
        return False
    return "reasoning" in name or name.startswith(("grok-3-mini", "grok-4"))


class XAI(Preset):
    """api.x.ai."""

    name = "xai"
    label = "xAI"
    base_url = "https://api.x.ai/v1"
    api_key_env = "XAI_API_KEY"

    def unsupported(
        self, capability: Capability, body: Mapping[str, Any], model: str
    ) -> list[Refusal]:
        if capability is not Capability.CHAT or not is_reasoning_model(model):
            return []
        return [
            Refusal(param, f"xAI's reasoning model `{model}` does not accept it")
            for param in REASONING_REFUSES
            if param in body
        ]

    def refine(self, problem: Problem) -> Problem:
        code = problem.code
        if code is None:
            return problem
        slug = re.sub(r"[^a-z0-9]+", "_", code.lower()).strip("_")
        if "invalid_argument" in slug:
            slug = "invalid_argument"
        return replace(problem, code=slug or None)
