"""llama.cpp's llama-server.

- Error ``code``s are the HTTP status (an integer); an over-long prompt is
  ``exceed_context_size_error``; while a model loads it answers 503 ``unavailable_error``.
- It sends usage on streams even unasked.
"""

from __future__ import annotations

from dataclasses import replace

from kakehashi.backends.presets.base import Preset, Problem


class LlamaServer(Preset):
    """localhost:8080."""

    name = "llama-server"
    label = "llama-server"
    base_url = "http://localhost:8080/v1"

    def refine(self, problem: Problem) -> Problem:
        if problem.type == "exceed_context_size_error":
            return replace(problem, code="context_length_exceeded", type="invalid_request_error")
        if problem.type == "unavailable_error":
            return replace(problem, code="service_unavailable", type="server_error")
        return problem
