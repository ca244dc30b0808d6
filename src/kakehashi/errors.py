"""The one exception tree of kakehashi.

Every error a client can see is a subclass of :class:`KakehashiError` and knows how it
renders as an OpenAI error envelope ``{"error": {"message", "type", "param", "code"}}``::

    KakehashiError                      500 server_error
    ├── InvalidRequestError             400 invalid_request_error
    │   ├── ContextLengthExceededError  400 code=context_length_exceeded
    │   └── RequestTooLargeError        413
    ├── AuthenticationError             401 code=invalid_api_key
    ├── PermissionDeniedError           403
    ├── NotFoundError                   404
    │   └── ModelNotFoundError          404 code=model_not_found
    ├── ConflictError                   409
    ├── RateLimitError                  429 code=rate_limit_exceeded, type=requests|tokens
    │   └── QuotaExceededError          429 code=insufficient_quota, x-should-retry: false
    ├── ServerError                     500
    └── ServiceUnavailableError         503

Code raises these; the HTTP layer maps them to responses in exactly one handler, which also
sends the ``headers`` an error carries (``Retry-After``, ``x-ratelimit-*``, ``x-should-retry``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar


class KakehashiError(Exception):
    """Base class: an error with an OpenAI-style status, type, code and param."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.type: str = self.error_type
        self.headers: dict[str, str] = dict(headers or {})

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI error envelope for this error."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequestError(KakehashiError):
    """The request is malformed or asks for something impossible."""

    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthExceededError(InvalidRequestError):
    """Prompt plus requested completion do not fit the model's context window."""

    default_code = "context_length_exceeded"


class RequestTooLargeError(InvalidRequestError):
    """The request body is larger than the server accepts."""

    status_code = 413


class AuthenticationError(KakehashiError):
    """No API key, or one the server does not know."""

    status_code = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"


class PermissionDeniedError(KakehashiError):
    """The key is known but may not do this."""

    status_code = 403
    error_type = "invalid_request_error"


class NotFoundError(KakehashiError):
    """The addressed resource or route does not exist."""

    status_code = 404
    error_type = "invalid_request_error"


class ModelNotFoundError(NotFoundError):
    """The model does not exist, or the caller may not use it (indistinguishable on purpose)."""

    default_code = "model_not_found"

    def __init__(self, model: str, *, message: str | None = None, param: str | None = "model"):
        super().__init__(
            message or f"The model `{model}` does not exist or you do not have access to it.",
            param=param,
        )
        self.model = model


class ConflictError(KakehashiError):
    """The request conflicts with the current state of a resource."""

    status_code = 409
    error_type = "invalid_request_error"


class RateLimitError(KakehashiError):
    """Too many requests, or the server's queue is full.

    ``limit_type`` is what ran out, as OpenAI's ``type``: ``requests`` or ``tokens``.
    ``retry_after`` (seconds) adds ``Retry-After`` and ``retry-after-ms``; ``retryable=False``
    (a request larger than the limit itself) adds ``x-should-retry: false`` instead.
    """

    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"

    def __init__(
        self,
        message: str,
        *,
        limit_type: str | None = None,
        retry_after: float | None = None,
        retryable: bool = True,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        all_headers = dict(headers or {})
        if retry_after is not None and retryable:
            all_headers["retry-after"] = str(max(1, math.ceil(retry_after)))
            all_headers["retry-after-ms"] = str(max(1, math.ceil(retry_after * 1000)))
        if not retryable:
            all_headers["x-should-retry"] = "false"
        super().__init__(message, param=param, code=code, headers=all_headers)
        if limit_type is not None:
            self.type = limit_type
        self.retry_after = retry_after
        self.retryable = retryable


class QuotaExceededError(RateLimitError):
    """The key has spent its budget: a 429 no retry can fix."""

    error_type = "insufficient_quota"
    default_code = "insufficient_quota"

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None):
        super().__init__(message, retryable=False, headers=headers)


class ServerError(KakehashiError):
    """Something broke on our side."""


class ServiceUnavailableError(KakehashiError):
    """The server (or an upstream) cannot take the request right now."""

    status_code = 503
    error_type = "server_error"
    default_code = "service_unavailable"
