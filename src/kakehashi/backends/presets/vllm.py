"""vLLM's OpenAI server (also as a Ray or Kubernetes cluster behind one URL).

- Error ``code``s are the HTTP status (an integer) and ``type`` is an exception class name
  (``BadRequestError``); older versions send the fields flat with ``"object": "error"``.
- ``best_of`` is gone from its V1 engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from kakehashi.backends.presets.base import Preset, Problem, Refusal
from kakehashi.capabilities import Capability

_TYPES = {
    "BadRequestError": "invalid_request_error",
    "NotFoundError": "invalid_request_error",
    "InternalServerError": "server_error",
    "ServiceUnavailableError": "server_error",
}


class VLLM(Preset):
    """A vLLM server."""

    name = "vllm"
    label = "vLLM"
    base_url = "http://localhost:8000/v1"

    def unsupported(
        self, capability: Capability, body: Mapping[str, Any], model: str
    ) -> list[Refusal]:
        if capability is Capability.COMPLETIONS and body.get("best_of") not in (None, 1):
            return [Refusal("best_of", "vLLM's V1 engine has no `best_of`")]
        return []

    def refine(self, problem: Problem) -> Problem:
        if problem.type in _TYPES:
            return replace(problem, type=_TYPES[problem.type])
        return problem
