"""The client kit's exceptions: the server's OpenAI error, said plainly.

::

    ClientError                  anything the kit cannot do, with the server's message
    ├── ConnectionFailed         the server could not be reached
    ├── AuthenticationFailed     401/403: a missing or wrong key
    ├── ModelNotFound            404 model_not_found; ``replacement`` when the server names one
    └── ContextWindowExceeded    the prompt alone does not fit the model's context window
"""

from __future__ import annotations

import re
from typing import Any

_REPLACEMENT = re.compile(r"use `([^`]+)` instead")


class ClientError(Exception):
    """An error with the server's (or the kit's) message and OpenAI's status, type, code and
    param when the server gave them."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.code = code
        self.param = param

    def __str__(self) -> str:
        where = f"{self.status} " if self.status else ""
        code = f" ({self.code})" if self.code else ""
        return f"{where}{self.message}{code}" if where or code else self.message


class ConnectionFailed(ClientError):
    """The server did not answer (refused, timed out, unknown host)."""


class AuthenticationFailed(ClientError):
    """The server refused the key."""


class ModelNotFound(ClientError):
    """The model does not exist here, is not the key's to use, or was retired."""

    @property
    def replacement(self) -> str | None:
        """The model the server says to use instead, if it names one."""
        found = _REPLACEMENT.search(self.message)
        return found.group(1) if found else None


class ContextWindowExceeded(ClientError):
    """What must be sent does not fit the context window, even with no history."""


def from_openai(exc: Exception) -> ClientError:
    """The kit's error for an exception the ``openai`` SDK raised."""
    import openai

    if isinstance(exc, openai.APIStatusError):
        error = _error_object(exc.body)
        message = str(error.get("message") or exc.message)
        fields: dict[str, Any] = {
            "status": exc.status_code,
            "type": error.get("type"),
            "code": _text(error.get("code")),
            "param": error.get("param"),
        }
        if exc.status_code in (401, 403):
            return AuthenticationFailed(message, **fields)
        if exc.status_code == 404 and (fields["code"] == "model_not_found" or "model" in message):
            return ModelNotFound(message, **fields)
        if fields["code"] == "context_length_exceeded":
            return ContextWindowExceeded(message, **fields)
        return ClientError(message, **fields)
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        url = getattr(getattr(exc, "request", None), "url", None)
        where = f" ({exc.request.method} {url})" if url is not None else ""
        return ConnectionFailed(f"Could not reach the server{where}: {cause}")
    if isinstance(exc, openai.OpenAIError):
        return ClientError(str(exc))
    raise exc


def _error_object(body: object) -> dict[str, Any]:
    """The ``error`` object of an OpenAI envelope, whatever shape the provider used (Gemini
    wraps it in a list, PLaMo sends a bare ``message``, xAI a string ``error``)."""
    if isinstance(body, list) and body:
        body = body[0]
    if isinstance(body, str):  # the SDK unwrapped a string ``error``
        return {"message": body}
    if not isinstance(body, dict):
        return {}
    inner = body.get("error", body)
    if isinstance(inner, str):
        return {"message": inner, "code": body.get("code")}
    return inner if isinstance(inner, dict) else {}


def _text(value: object) -> str | None:
    return None if value is None else str(value)
