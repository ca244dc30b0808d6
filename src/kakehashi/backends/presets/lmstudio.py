"""LM Studio's local server.

- An unknown route is answered 200 with ``{"error": "Unexpected endpoint or method. ..."}``, so
  even a successful status is checked for an error body.
- ``logprobs`` is accepted and ignored; ``response_format`` ``json_object`` is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kakehashi.backends.presets.base import Preset, Problem, Refusal
from kakehashi.capabilities import Capability


class LMStudio(Preset):
    """localhost:1234."""

    name = "lmstudio"
    label = "LM Studio"
    base_url = "http://localhost:1234/v1"

    def unsupported(
        self, capability: Capability, body: Mapping[str, Any], model: str
    ) -> list[Refusal]:
        refused = []
        if body.get("logprobs"):
            refused.append(Refusal("logprobs", "LM Studio ignores `logprobs`"))
        response_format = body.get("response_format")
        if isinstance(response_format, dict) and response_format.get("type") == "json_object":
            refused.append(
                Refusal("response_format", "LM Studio accepts only `json_schema` or `text`")
            )
        return refused

    def body_error(self, status: int, data: Any) -> Problem | None:
        if isinstance(data, dict) and isinstance(data.get("error"), str) and len(data) <= 2:
            message = data["error"]
            code = "not_found" if "Unexpected endpoint" in message else None
            return Problem(404 if code else 502, message, code=code, raw=data)
        return None
