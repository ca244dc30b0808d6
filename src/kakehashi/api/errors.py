"""The one place where errors become OpenAI error envelopes.

Typed :class:`KakehashiError` map to their status; request validation problems become 400
``invalid_request_error`` naming the offending parameter (never 422); unknown routes and
methods get the envelope too. Anything unexpected reaches :class:`UnhandledErrorMiddleware`,
which logs one traceback and answers a 500 that leaves the keep-alive connection usable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kakehashi.api.body import JSON_PARSE_MESSAGE
from kakehashi.errors import InvalidRequestError, KakehashiError, ServerError
from kakehashi.wire.common import describe_json_type

__all__ = [
    "INTERNAL_ERROR_MESSAGE",
    "JSON_PARSE_MESSAGE",
    "ThrottledWarnings",
    "UnhandledErrorMiddleware",
    "error_response",
    "install_error_handlers",
    "invalid_request",
]

logger = logging.getLogger(__name__)

INTERNAL_ERROR_MESSAGE = "The server had an error while processing your request. Sorry about that!"

# pydantic's type errors → the JSON type OpenAI says it expected.
_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a decimal",
    "float_parsing": "a decimal",
    "string_type": "a string",
    "bool_type": "a boolean",
    "bool_parsing": "a boolean",
    "list_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}
# Where FastAPI says a parameter came from; not part of the parameter's name.
_SOURCES = frozenset({"body", "query", "path", "header", "cookie"})


def error_response(error: KakehashiError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The HTTP response for ``error`` (with the headers it carries, then ``headers``)."""
    merged = {**error.headers, **(headers or {})}
    return JSONResponse(error.to_dict(), status_code=error.status_code, headers=merged)


class ThrottledWarnings:
    """Logs a recurring warning (one per ``key``) at most once per ``interval`` seconds; the
    next line it lets through says how many were held back meanwhile."""

    def __init__(
        self,
        log: logging.Logger,
        *,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, key: str, message: str) -> None:
        """Log ``message`` now, or count it if ``key`` was logged less than an interval ago."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._held[key] = self._held.get(key, 0) + 1
            return
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held and last is not None:
            message += f" (and {held} more like it in the last {now - last:.0f} s)"
        self._log.warning("%s", message)


def _param(loc: Sequence[Any], ctx: Mapping[str, Any]) -> str:
    """OpenAI's name of a parameter: ``messages[0].role``."""
    parts = list(loc)
    if parts and parts[0] in _SOURCES:
        parts = parts[1:]
    if ctx.get("subparam"):
        parts.append(str(ctx["subparam"]))
    name = ""
    for part in parts:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += f".{part}" if name else str(part)
    return name


def _bound_error(kind: str, param: str, value: Any, ctx: Mapping[str, Any]) -> tuple[str, str]:
    above = kind in ("less_than_equal", "less_than")
    limit = ctx.get("le", ctx.get("lt")) if above else ctx.get("ge", ctx.get("gt"))
    op = {"less_than_equal": "<=", "less_than": "<", "greater_than_equal": ">="}.get(kind, ">")
    # Bounds of float fields are floats; OpenAI calls those values decimals.
    number = "decimal" if isinstance(limit, float) else "integer"
    side = "above maximum" if above else "below minimum"
    code = f"{number}_{'above_max' if above else 'below_min'}_value"
    if isinstance(limit, float) and limit.is_integer():
        limit = int(limit)
    message = (
        f"Invalid '{param}': {number} {side} value. Expected a value {op} {limit}, "
        f"but got {value} instead."
    )
    return message, code


def invalid_request(errors: Sequence[Mapping[str, Any]]) -> InvalidRequestError:
    """An :class:`InvalidRequestError` describing the first of pydantic's ``errors``."""
    if not errors:
        return InvalidRequestError("Invalid request.")
    error = errors[0]
    kind: str = error.get("type", "")
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    value = error.get("input")
    param = _param(error.get("loc", ()), ctx)
    code: str | None = kind
    if kind == "json_invalid":
        return InvalidRequestError(JSON_PARSE_MESSAGE)
    if not param:
        got = describe_json_type(value)
        return InvalidRequestError(
            f"Invalid request body: expected a JSON object, but got {got} instead.",
            code="invalid_type",
        )
    if kind == "missing":
        message, code = f"Missing required parameter: '{param}'.", "missing_required_parameter"
    elif kind == "literal_error":
        message = f"Invalid value: '{value}'. Supported values are: {ctx.get('expected')}."
        code = "invalid_value"
    elif kind in ("less_than_equal", "less_than", "greater_than_equal", "greater_than"):
        message, code = _bound_error(kind, param, value, ctx)
    elif kind == "too_short" and not value:
        message = (
            f"Invalid '{param}': empty array. Expected an array with minimum length "
            f"{ctx.get('min_length')}, but got an empty array instead."
        )
        code = "empty_array"
    elif kind == "too_short":
        message = (
            f"Invalid '{param}': array too short. Expected an array with minimum length "
            f"{ctx.get('min_length')}, but got an array with length {ctx.get('actual_length')} "
            "instead."
        )
        code = "array_below_min_length"
    elif kind == "too_long":
        message = (
            f"Invalid '{param}': array too long. Expected an array with maximum length "
            f"{ctx.get('max_length')}, but got an array with length {ctx.get('actual_length')} "
            "instead."
        )
        code = "array_above_max_length"
    elif kind in _EXPECTED:
        message = (
            f"Invalid type for '{param}': expected {_EXPECTED[kind]}, but got "
            f"{describe_json_type(value)} instead."
        )
        code = "invalid_type"
    elif "{param}" in error.get("msg", ""):  # our own validators' messages
        message = error["msg"].replace("{param}", param)
    else:
        detail = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        message, code = f"Invalid '{param}': {detail}", None
    return InvalidRequestError(message, param=param, code=code)


def install_error_handlers(app: FastAPI) -> None:
    """Route every error the app can raise through the OpenAI envelope."""

    refusals = ThrottledWarnings(logger)

    @app.exception_handler(KakehashiError)
    async def _kakehashi(request: Request, exc: KakehashiError) -> JSONResponse:
        route = f"{request.method} {request.url.path}"
        if exc.status_code == 503:  # overload and shutdown: expected under load, summarised
            refusals.warning(exc.code or "503", f"{route} refused: {exc.message}")
        elif exc.status_code >= 500:
            logger.error("%s failed: %s", route, exc.message)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(invalid_request(exc.errors()))

    @app.exception_handler(ValidationError)
    async def _validation(request: Request, exc: ValidationError) -> JSONResponse:
        return error_response(invalid_request(exc.errors()))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        route = f"{request.method} {request.url.path}"
        if exc.status_code == 404:
            message = f"Invalid URL ({route})"
        elif exc.status_code == 405:
            message = f"Invalid method for URL ({route})"
        else:
            message = str(exc.detail)
        body = {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


class UnhandledErrorMiddleware:
    """The last resort for exceptions no handler knows: log one traceback and answer a 500
    envelope, if the response has not started yet.

    Pure ASGI, inside Starlette's ``ServerErrorMiddleware``: that one answers and then
    re-raises, so the server logs a second traceback and resets the keep-alive connection.
    Here the exception ends with the 500 and the connection stays usable. A response that
    already started cannot be mended; it is left unfinished, and the server closes it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            logger.exception("%s %s failed unexpectedly", scope.get("method"), scope.get("path"))
            if not started:
                await error_response(ServerError(INTERNAL_ERROR_MESSAGE))(scope, receive, send)
