"""Gemini's OpenAI-compatible endpoint.

- It refuses every field it does not know with a 400 ("Unknown name ..."), so the request is
  checked against the fields it accepts; Gemini's own features travel in ``extra_body``.
- Its errors come as a JSON array of Google API errors, whose ``status`` (``INVALID_ARGUMENT``,
  ``RESOURCE_EXHAUSTED``, ...) is the code; a 429 carries its wait in ``RetryInfo.retryDelay``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from kakehashi.backends.presets.base import Preset, Problem, Refusal
from kakehashi.capabilities import Capability

ACCEPTED = {
    Capability.CHAT: frozenset(
        {
            "model",
            "messages",
            "max_tokens",
            "max_completion_tokens",
            "n",
            "temperature",
            "top_p",
            "stop",
            "stream",
            "stream_options",
            "tools",
            "tool_choice",
            "response_format",
            "reasoning_effort",
            "seed",
            "presence_penalty",
            "frequency_penalty",
            "logprobs",
            "top_logprobs",
            "modalities",
            "audio",
            "extra_body",
            "parallel_tool_calls",
            "service_tier",
        }
    ),
    Capability.EMBEDDINGS: frozenset({"model", "input", "encoding_format", "dimensions"}),
}
_STATUS_CODES = {
    "INVALID_ARGUMENT": "invalid_argument",
    "FAILED_PRECONDITION": "failed_precondition",
    "RESOURCE_EXHAUSTED": "rate_limit_exceeded",
    "NOT_FOUND": "model_not_found",
    "PERMISSION_DENIED": "upstream_unauthorized",
    "UNAUTHENTICATED": "upstream_unauthorized",
    "INTERNAL": "server_error",
    "UNAVAILABLE": "service_unavailable",
    "DEADLINE_EXCEEDED": "timeout",
}


def _retry_delay(details: Any) -> float | None:
    for detail in details if isinstance(details, list) else []:
        delay = detail.get("retryDelay") if isinstance(detail, dict) else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return float(delay[:-1])
            except ValueError:
                return None
    return None


class Gemini(Preset):
    """generativelanguage.googleapis.com's OpenAI endpoint."""

    name = "gemini"
    label = "Gemini"
    base_url = "https://generativelanguage.googleapis.com/v1beta/openai"
    api_key_env = "GEMINI_API_KEY"

    def unsupported(
        self, capability: Capability, body: Mapping[str, Any], model: str
    ) -> list[Refusal]:
        accepted = ACCEPTED.get(capability)
        if accepted is None:
            return []
        return [
            Refusal(key, "Gemini refuses fields it does not know")
            for key in body
            if key not in accepted
        ]

    def refine(self, problem: Problem) -> Problem:
        raw = problem.raw[0] if isinstance(problem.raw, list) and problem.raw else problem.raw
        error = raw.get("error") if isinstance(raw, dict) else None
        if not isinstance(error, dict):
            return problem
        status = error.get("status")
        code = _STATUS_CODES.get(status) if isinstance(status, str) else None
        if (
            code == "invalid_argument"
            and "token" in problem.message.lower()
            and ("exceeds" in problem.message.lower())
        ):
            code = "context_length_exceeded"
        delay = _retry_delay(error.get("details"))
        return replace(
            problem,
            code=code or problem.code,
            type=None,
            retry_after=problem.retry_after if delay is None else delay,
        )
