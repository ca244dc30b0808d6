"""Reading a JSON request body: the media type, the JSON itself, and what Python's parser lets
through that nothing after it should see (deep nesting, lone surrogates, NaN)."""

from __future__ import annotations

import json
from typing import Any

from kakehashi.errors import InvalidRequestError, UnsupportedMediaTypeError

JSON_PARSE_MESSAGE = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON.)"
)
MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects a body may have (tool schemas need a handful)."""


def is_json_media_type(content_type: str | None) -> bool:
    """Whether a ``Content-Type`` header names JSON (``application/json``, ``…+json``)."""
    media_type = (content_type or "").partition(";")[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def require_json_media_type(content_type: str | None) -> None:
    """Raise 415 unless the body is declared as JSON."""
    if not is_json_media_type(content_type):
        got = f"'{content_type}'" if content_type else "no Content-Type"
        raise UnsupportedMediaTypeError(
            f"Unsupported Content-Type: this endpoint reads JSON, but the request has {got}. "
            "Send the body with 'Content-Type: application/json'."
        )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_json(raw: bytes) -> Any:
    """``raw`` as JSON, or the 400 "could not parse" error. Refuses what Python would accept
    beyond the standard (``NaN``, ``Infinity``), nesting deeper than :data:`MAX_JSON_DEPTH`,
    and strings holding lone surrogates (which no tokenizer or response can carry); the last
    error names the parameter."""
    try:
        data = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # includes JSONDecodeError, bad UTF-8, huge integers
        raise InvalidRequestError(JSON_PARSE_MESSAGE) from None
    _check_values(data)
    return data


def _check_values(data: Any) -> None:
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict | list) and len(path) >= MAX_JSON_DEPTH:
            raise InvalidRequestError(
                f"{JSON_PARSE_MESSAGE} The body nests arrays and objects more than "
                f"{MAX_JSON_DEPTH} levels deep."
            )
        if isinstance(value, str):
            _check_text(value, path)
        elif isinstance(value, dict):
            for key, item in value.items():
                _check_text(key, path)
                stack.append((item, (*path, key)))
        elif isinstance(value, list):
            stack.extend((item, (*path, index)) for index, item in enumerate(value))


def _check_text(text: str, path: tuple[str | int, ...]) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        param = param_name(path)
        where = f"'{param}'" if param else "the request body"
        code_point = ord(text[exc.start])
        raise InvalidRequestError(
            f"Invalid {where}: the string contains a lone surrogate (\\u{code_point:04x}), "
            "which is not valid Unicode. Encode text as UTF-8, or escape whole surrogate pairs.",
            param=param or None,
            code="invalid_value",
        ) from None


def param_name(path: tuple[str | int, ...]) -> str:
    """OpenAI's name of a place in the body: ``messages[0].content``."""
    name = ""
    for part in path:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += f".{part}" if name else part
    return name
