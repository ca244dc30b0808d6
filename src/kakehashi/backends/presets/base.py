"""What every provider preset shares: the generic OpenAI-compatible behaviour, and the error
normalizer that turns whatever an upstream sent into OpenAI's envelope.

Upstreams answer errors in many shapes: OpenAI's envelope (sometimes with an integer ``code``),
a JSON array of such objects, a flat ``{"code", "error"}``, a bare ``{"message"}``, a string,
or HTML from a proxy. :func:`read_problem` reads all of them into a :class:`Problem`;
:meth:`Preset.error` turns it into an :class:`~kakehashi.errors.UpstreamError` with the status
the client should see, a string ``code`` and whether retrying may help. A preset overrides
:meth:`Preset.refine` for its provider's own codes, and :meth:`Preset.unsupported` for the
parameters its provider refuses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar

from kakehashi.capabilities import Capability
from kakehashi.errors import UpstreamError

OPENAI_TYPES = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "rate_limit_error",
        "server_error",
        "requests",
        "tokens",
        "insufficient_quota",
    }
)
_CONTEXT_WORDS = re.compile(
    r"context[ _-]?(length|window|size)|maximum context|too many tokens|prompt is too long|"
    r"exceed_context_size|reduce the length",
    re.IGNORECASE,
)
_DEFAULT_CODES = {
    400: "invalid_request",
    404: "not_found",
    409: "conflict",
    413: "request_too_large",
    429: "rate_limit_exceeded",
    500: "server_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "timeout",
}


@dataclass(frozen=True, slots=True)
class Problem:
    """An upstream's error as read from its body, before normalization."""

    status: int
    message: str
    type: str | None = None
    code: str | None = None
    param: str | None = None
    retry_after: float | None = None
    raw: Any = None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value)


def _from_object(status: int, data: Mapping[str, Any]) -> Problem:
    inner = data.get("error")
    if isinstance(inner, Mapping):  # OpenAI's envelope (llama-server, vLLM, Ollama, Gemini)
        code = inner.get("code")
        return Problem(
            status,
            str(inner.get("message") or inner.get("status") or "The upstream failed."),
            type=_text(inner.get("type")),
            code=None if code is None else str(code),
            param=_text(inner.get("param")),
            raw=data,
        )
    if isinstance(inner, str):  # xAI's flat {"code", "error"}, LM Studio's {"error"}
        return Problem(status, inner, code=_text(data.get("code")), raw=data)
    if "message" in data:  # PLaMo's {"message"}, vLLM's older flat {"object": "error", ...}
        code = data.get("code")
        return Problem(
            status,
            str(data["message"]),
            type=_text(data.get("type")),
            code=None if code is None else str(code),
            param=_text(data.get("param")),
            raw=data,
        )
    return Problem(status, json.dumps(data)[:500], raw=data)


def read_problem(status: int, body: bytes) -> Problem:
    """Whatever an upstream answered with ``status``, as a :class:`Problem`."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        text = body.decode("utf-8", "replace").strip()
        text = re.sub(r"<[^>]+>", " ", text)  # an HTML error page
        text = " ".join(text.split())[:300]
        return Problem(status, text or f"The upstream answered HTTP {status}.")
    if isinstance(data, list) and data and isinstance(data[0], Mapping):  # Gemini's array
        return _from_object(status, data[0])
    if isinstance(data, Mapping):
        return _from_object(status, data)
    return Problem(status, str(data)[:300], raw=data)


def retry_after_of(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    import time

    return max(0.0, when.timestamp() - time.time())


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request parameter a provider cannot honour, and why."""

    param: str
    reason: str


class Preset:
    """A generic OpenAI-compatible server: no quirks.

    ``stream_usage`` says whether the upstream understands ``stream_options.include_usage``
    (the gateway asks for usage on every stream it forwards).
    """

    name: ClassVar[str] = "openai-compatible"
    label: ClassVar[str] = "the upstream"
    base_url: ClassVar[str | None] = None
    base_url_aliases: ClassVar[Mapping[str, str]] = {}
    api_key_env: ClassVar[str | None] = None
    stream_usage: ClassVar[bool] = True

    def unsupported(
        self, capability: Capability, body: Mapping[str, Any], model: str
    ) -> list[Refusal]:
        """The parameters of ``body`` this provider would refuse or ignore for ``model``."""
        return []

    def body_error(self, status: int, data: Any) -> Problem | None:
        """An error hidden in a successful answer, if the provider does that."""
        return None

    def refine(self, problem: Problem) -> Problem:
        """The provider's own codes and statuses, in OpenAI's terms."""
        return problem

    def error(
        self, status: int, headers: Mapping[str, str], body: bytes, upstream: str
    ) -> UpstreamError:
        """The error the client sees for an upstream's answer of ``status``."""
        problem = read_problem(status, body)
        problem = replace(problem, retry_after=retry_after_of(headers))
        return normalize(self.refine(problem), headers, upstream)


def normalize(problem: Problem, headers: Mapping[str, str], upstream: str) -> UpstreamError:
    """``problem`` as OpenAI would have answered it: status, type, a string code, and
    whether a retry may help (the upstream's own ``x-should-retry`` wins)."""
    status, code, kind = problem.status, problem.code, problem.type
    if code is not None and code.lstrip("-").isdigit():  # llama-server and vLLM: the status
        code = None
    message = problem.message
    if status in (401, 403) or code == "upstream_unauthorized":
        return UpstreamError(
            f"The upstream `{upstream}` refused kakehashi's credentials: {message}",
            status_code=502,
            error_type="server_error",
            code="upstream_unauthorized",
            retryable=False,
            upstream=upstream,
        )
    if status == 422:
        status = 400
    if status == 408:
        status = 504
    if status == 200:  # an error in a successful answer
        status = 502 if code is None else 400
    if code is None and status == 400 and _CONTEXT_WORDS.search(message):
        code = "context_length_exceeded"
    if code is None and status == 404 and "model" in message.lower():
        code = "model_not_found"
    if status == 429 and code is None:
        code = "insufficient_quota" if "quota" in message.lower() else "rate_limit_exceeded"
    code = code or _DEFAULT_CODES.get(status) or ("server_error" if status >= 500 else "error")
    if kind not in OPENAI_TYPES:
        if status == 429:
            kind = "insufficient_quota" if code == "insufficient_quota" else "rate_limit_error"
        else:
            kind = "server_error" if status >= 500 else "invalid_request_error"
    retryable = status in (409, 429) or status >= 500
    if code == "insufficient_quota" or status < 400:
        retryable = False
    decided = headers.get("x-should-retry")
    if decided in ("true", "false"):
        retryable = decided == "true"
    return UpstreamError(
        message,
        status_code=status if status >= 400 else 502,
        error_type=kind,
        code=code,
        param=problem.param,
        retryable=retryable,
        retry_after=problem.retry_after,
        upstream=upstream,
    )
