"""Check every HTTP response of the OpenAI surface against OpenAI's schemas.

:func:`check_response` takes any response object shaped like ``httpx.Response`` (httpx, the
SDK's own httpx fork) or ``requests.Response``; it picks the schema from the route and status,
validates a JSON body, or parses an SSE body frame by frame and validates every chunk. It can
be installed as an httpx ``response`` event hook, so every answer the official SDK receives is
checked before the SDK parses it (see :func:`sdk_http_client`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from support.openapi import validate

__all__ = [
    "SSE_DONE",
    "CheckedBody",
    "check_body",
    "check_response",
    "parse_sse",
    "schema_for",
    "sdk_async_http_client",
    "sdk_http_client",
    "validate_chunk",
]

SSE_DONE = "[DONE]"

# (method, path under /v1) → (schema of a JSON body, schema of each stream chunk)
_ROUTES: list[tuple[str, re.Pattern[str], str, str | None]] = [
    (
        "POST",
        re.compile(r"/chat/completions"),
        "CreateChatCompletionResponse",
        "CreateChatCompletionStreamResponse",
    ),
    (
        "POST",
        re.compile(r"(/engines/[^/]+)?/completions"),
        "CreateCompletionResponse",
        "CreateCompletionResponse",
    ),
    ("GET", re.compile(r"/models"), "ListModelsResponse", None),
    ("GET", re.compile(r"/models/.+"), "Model", None),
]


def schema_for(method: str, path: str, status: int) -> tuple[str, str | None] | None:
    """(body schema, stream chunk schema) for a response, or None outside the OpenAI surface."""
    if status >= 400:
        return "ErrorResponse", "ErrorResponse"
    _, found, api_path = path.partition("/v1")
    if not found:
        return None
    for route_method, pattern, body_schema, chunk_schema in _ROUTES:
        if route_method == method.upper() and pattern.fullmatch(api_path.rstrip("/")):
            return body_schema, chunk_schema
    return None


def parse_sse(text: str) -> list[str]:
    """The ``data`` payloads of an SSE body, in order (``[DONE]`` included).

    Asserts OpenAI's framing: events separated by a blank line, each carrying one ``data: ``
    line (comment lines starting with ``:`` are allowed), and nothing after ``[DONE]``.
    """
    text = text.replace("\r\n", "\n")
    assert text.endswith("\n\n"), f"SSE body does not end with a blank line: {text[-200:]!r}"
    payloads: list[str] = []
    for event in text[:-2].split("\n\n"):
        data = [line for line in event.split("\n") if not line.startswith(":")]
        if not data:
            continue  # a keep-alive comment
        assert len(data) == 1 and data[0].startswith("data: "), f"bad SSE event: {event!r}"
        assert SSE_DONE not in payloads, f"SSE event after [DONE]: {event!r}"
        payloads.append(data[0][len("data: ") :])
    return payloads


@dataclass
class CheckedBody:
    """What :func:`check_body` found: a JSON body, or the chunks of a stream."""

    json: Any = None
    chunks: list[Any] | None = None  # parsed stream chunks, without [DONE]
    done: bool = False  # whether the stream ended with data: [DONE]


def check_body(method: str, path: str, status: int, content_type: str, body: bytes) -> CheckedBody:
    """Validate one response body; raise ``AssertionError`` on any mismatch."""
    schemas = schema_for(method, path, status)
    where = f"{method} {path} → {status}"
    if content_type.startswith("text/event-stream"):
        payloads = parse_sse(body.decode("utf-8"))
        done = bool(payloads) and payloads[-1] == SSE_DONE
        chunks = [json.loads(p) for p in (payloads[:-1] if done else payloads)]
        assert schemas and schemas[1], f"{where}: a stream where none is expected"
        for chunk in chunks:
            validate_chunk(schemas[1], chunk, where=where)
        return CheckedBody(chunks=chunks, done=done)
    if schemas is None:
        return CheckedBody()
    assert content_type.startswith("application/json"), f"{where}: content-type {content_type}"
    parsed = json.loads(body)
    if schemas[0] == "CreateCompletionResponse":
        validate_chunk(schemas[0], parsed, where=where)
    else:
        _validate(schemas[0], parsed, where)
    return CheckedBody(json=parsed)


def _as_spec_completion(body: dict[str, Any]) -> dict[str, Any]:
    """A ``text_completion`` body (whole or streamed) as the spec can check it.

    The spec is stricter than OpenAI's documented behaviour in three places, and exactly those
    nulls are bridged (the keys must still be there):

    * a streamed chunk has ``"finish_reason": null`` on every chunk but the last one;
    * with ``stream_options.include_usage`` every other chunk has ``"usage": null`` (see
      ``ChatCompletionStreamOptions``, which the completions request uses too);
    * with ``echo`` the first prompt token has no logprob: ``token_logprobs[0]`` and
      ``top_logprobs[0]`` are null.
    """
    if "usage" in body and body["usage"] is None:
        body = {key: value for key, value in body.items() if key != "usage"}
    choices = body.get("choices")
    if not isinstance(choices, list):
        return body
    return {**body, "choices": [_as_spec_choice(choice) for choice in choices]}


def _as_spec_choice(choice: Any) -> Any:
    if not isinstance(choice, dict):
        return choice
    if "finish_reason" in choice and choice["finish_reason"] is None:
        choice = {**choice, "finish_reason": "length"}
    logprobs = choice.get("logprobs")
    if isinstance(logprobs, dict):
        bridged = dict(logprobs)
        for key, stand_in in (("token_logprobs", 0.0), ("top_logprobs", {})):
            values = bridged.get(key)
            if isinstance(values, list) and values and values[0] is None:
                bridged[key] = [stand_in, *values[1:]]
        choice = {**choice, "logprobs": bridged}
    return choice


def validate_chunk(schema: str, chunk: Any, *, where: str = "stream chunk") -> None:
    """Validate one parsed stream chunk against ``schema`` (an error frame as ErrorResponse)."""
    if isinstance(chunk, dict) and "error" in chunk:
        schema = "ErrorResponse"
    elif schema == "CreateCompletionResponse":
        chunk = _as_spec_completion(chunk)
    _validate(schema, chunk, where)


def _validate(schema: str, instance: Any, where: str) -> None:
    try:
        validate(schema, instance)
    except AssertionError as exc:
        raise AssertionError(f"{where}: {exc}\nbody: {json.dumps(instance)[:2000]}") from None


def check_response(response: Any) -> CheckedBody:
    """Validate an httpx-style or requests response (its body is read in full)."""
    if hasattr(response, "read"):  # httpx and its fork
        response.read()
        method, path = response.request.method, response.request.url.path
        body = response.content
    else:  # requests
        method, path = response.request.method, response.request.path_url.split("?")[0]
        body = response.content
    return check_body(
        method, path, response.status_code, response.headers.get("content-type", ""), body
    )


async def _acheck_response(response: Any) -> None:
    await response.aread()
    check_response(response)


def sdk_http_client(**kwargs: Any) -> Any:
    """An HTTP client for ``openai.OpenAI(http_client=...)`` that checks every response.

    Stream bodies are read in full before the SDK sees them; use raw HTTP to test timing.
    """
    import openai

    return openai.DefaultHttpxClient(event_hooks={"response": [check_response]}, **kwargs)


def sdk_async_http_client(**kwargs: Any) -> Any:
    """The async twin of :func:`sdk_http_client`, for ``openai.AsyncOpenAI``."""
    import openai

    return openai.DefaultAsyncHttpxClient(event_hooks={"response": [_acheck_response]}, **kwargs)
