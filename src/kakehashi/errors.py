"""The one exception tree of kakehashi.

Every error a client can see is a subclass of :class:`KakehashiError` and knows how it
renders as an OpenAI error envelope ``{"error": {"message", "type", "param", "code"}}``::

    KakehashiError                      500 server_error
    ├── InvalidRequestError             400 invalid_request_error
    │   ├── ContextLengthExceededError  400 code=context_length_exceeded
    │   ├── RequestTooLargeError        413 code=request_too_large
    │   └── UnsupportedMediaTypeError   415 code=unsupported_media_type
    ├── AuthenticationError             401 code=invalid_api_key
    ├── PermissionDeniedError           403
    ├── NotFoundError                   404
    │   └── ModelNotFoundError          404 code=model_not_found
    ├── ConflictError                   409
    ├── RateLimitError                  429 code=rate_limit_exceeded, type=requests|tokens
    │   └── QuotaExceededError          429 code=insufficient_quota, x-should-retry: false
    ├── ServerError                     500
    ├── ServiceUnavailableError         503 (with Retry-After)
    └── UpstreamError                   an upstream's own status, type and code
        ├── BadGatewayError             502 code=bad_gateway (unreachable, malformed, refused us)
        └── GatewayTimeoutError         504 code=timeout

``should_retry`` says whether a client may try the same request again (sent as OpenAI's
``x-should-retry`` header); ``retry_after`` how long it should wait first (``Retry-After``).

Code raises these; the HTTP layer maps them to responses in exactly one handler, which also
sends the ``headers`` an error carries (``Retry-After``, ``x-ratelimit-*``, ``x-should-retry``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar


class KakehashiError(Exception):
    """Base class: an error with an OpenAI-style status, type, code and param."""

    status_code: int = 500
    error_type: str = "server_error"
    default_code: ClassVar[str | None] = None
    should_retry: bool | None = None
    retry_after: float | None = None

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
        self._extra_headers: dict[str, str] = dict(headers or {})

    @property
    def headers(self) -> dict[str, str]:
        """Response headers the error carries: ``x-should-retry``, ``Retry-After`` and any given
        to it (``x-ratelimit-*``)."""
        headers = dict(self._extra_headers)
        if self.should_retry is not None:
            headers["x-should-retry"] = "true" if self.should_retry else "false"
        if self.retry_after is not None:
            headers["retry-after"] = str(max(0, math.ceil(self.retry_after)))
            headers["retry-after-ms"] = str(max(0, round(self.retry_after * 1000)))
        return headers

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI error envelope for this error."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
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
    default_code = "request_too_large"


class UnsupportedMediaTypeError(InvalidRequestError):
    """The body is not of a media type the endpoint reads (JSON endpoints want JSON)."""

    status_code = 415
    default_code = "unsupported_media_type"


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
    """The model does not exist, or the caller may not use it (indistinguishable on purpose).

    ``param`` is null, as OpenAI sends it for this error.
    """

    default_code = "model_not_found"

    def __init__(self, model: str, *, message: str | None = None, param: str | None = None):
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
        super().__init__(message, param=param, code=code, headers=headers)
        if limit_type is not None:
            self.error_type = limit_type
        self.retryable = retryable
        if retryable:
            self.retry_after = retry_after
        else:
            self.should_retry = False


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
    retry_after: float | None = 1.0


class UpstreamError(KakehashiError):
    """An upstream provider refused or failed a request; carries the status, type and code the
    client should see (already normalized to OpenAI's conventions: ``code`` is a string).

    ``retryable`` says whether the gateway may try again (elsewhere or after a pause).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        error_type: str,
        code: str,
        param: str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        upstream: str | None = None,
    ):
        super().__init__(message, param=param, code=code)
        self.status_code = status_code
        self.error_type = error_type
        self.retryable = retryable
        self.should_retry = retryable
        self.retry_after = retry_after
        self.upstream = upstream


class BadGatewayError(UpstreamError):
    """An upstream could not be reached, answered nonsense, or refused kakehashi's own key."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = True,
        upstream: str | None = None,
        code: str = "bad_gateway",
    ):
        super().__init__(
            message,
            status_code=502,
            error_type="server_error",
            code=code,
            retryable=retryable,
            upstream=upstream,
        )


class GatewayTimeoutError(UpstreamError):
    """An upstream did not answer in time."""

    def __init__(self, message: str, *, upstream: str | None = None):
        super().__init__(
            message,
            status_code=504,
            error_type="server_error",
            code="timeout",
            retryable=True,
            upstream=upstream,
        )
