"""PLaMo (Preferred Networks).

- Errors are a bare ``{"message": ...}``; a missing or wrong key is a 400 ("missing key in
  request header"), not a 401.
- ``n`` may be 1 or 2 only; ``logprobs`` is accepted but not honoured.
- It sends no rate-limit headers.
- The API moved hosts; the old base URL is rewritten to the current one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

from kakehashi.backends.presets.base import Preset, Problem, Refusal
from kakehashi.capabilities import Capability


class PLaMo(Preset):
    """api.platform.preferredai.jp."""

    name = "plamo"
    label = "PLaMo"
    base_url = "https://api.platform.preferredai.jp/v1"
    base_url_aliases: ClassVar[Mapping[str, str]] = {
        "https://platform.preferredai.jp/api/completion/v1": "https://api.platform.preferredai.jp/v1"
    }
    api_key_env = "PLAMO_API_KEY"

    def unsupported(
        self, capability: Capability, body: Mapping[str, Any], model: str
    ) -> list[Refusal]:
        refused = []
        n = body.get("n")
        if isinstance(n, int) and n > 2:
            refused.append(Refusal("n", "PLaMo allows `n` of 1 or 2 only"))
        if body.get("logprobs"):
            refused.append(Refusal("logprobs", "PLaMo does not return logprobs"))
        if "top_logprobs" in body and body.get("logprobs"):
            refused.append(Refusal("top_logprobs", "PLaMo does not return logprobs"))
        return refused

    def refine(self, problem: Problem) -> Problem:
        if "key" in problem.message.lower() and problem.status in (400, 401, 403):
            return replace(problem, code="upstream_unauthorized")
        return problem
