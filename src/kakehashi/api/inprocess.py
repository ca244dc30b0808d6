"""The request path without HTTP: one request body in, a status and a JSON body out, through
the same validation and :class:`~kakehashi.gateway.service.GatewayService` calls as the routes.

The batch runner sends each line here with the batch owner's context, so a line gets exactly
what the same request over HTTP would get: the same 400 for a bad parameter, the same access
checks, limits, fallbacks and usage records.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from kakehashi.api.errors import INTERNAL_ERROR_MESSAGE, invalid_request
from kakehashi.errors import (
    InvalidRequestError,
    KakehashiError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
)
from kakehashi.gateway.context import RequestContext
from kakehashi.gateway.service import GatewayService, StreamAnswer
from kakehashi.wire.chat import ChatCompletionRequest
from kakehashi.wire.completions import CompletionRequest
from kakehashi.wire.embeddings import EmbeddingRequest


@dataclass(frozen=True, slots=True)
class Reply:
    """What one request got. ``retry_after`` (seconds) is set when it was refused only for
    now: a rate limit (not a spent budget) or a full queue."""

    status_code: int
    body: Mapping[str, Any]
    retry_after: float | None = None


def _retry_after(error: KakehashiError) -> float | None:
    if isinstance(error, RateLimitError):
        if not error.retryable:
            return None
        return error.retry_after if error.retry_after is not None else 1.0
    if isinstance(error, ServiceUnavailableError):
        found = getattr(error, "retry_after", None)
        return float(found) if isinstance(found, int | float) else 1.0
    return None


class InProcessGateway:
    """``await gateway(endpoint, body, ctx)``: one non-streamed request to ``service``."""

    def __init__(self, service: GatewayService) -> None:
        self.service = service

    async def __call__(self, endpoint: str, body: Mapping[str, Any], ctx: RequestContext) -> Reply:
        try:
            answer = await self._call(endpoint, body, ctx)
        except ValidationError as exc:
            return _error(invalid_request(exc.errors()))
        except KakehashiError as error:
            return _error(error)
        except Exception:  # a bug behind the gateway: the line fails, the batch goes on
            return _error(ServerError(INTERNAL_ERROR_MESSAGE))
        return Reply(200, json.loads(answer.model_dump_json()))

    async def _call(self, endpoint: str, body: Mapping[str, Any], ctx: RequestContext) -> BaseModel:
        if body.get("stream"):
            raise InvalidRequestError(
                "Streaming is not supported in a batch.", param="stream", code="invalid_value"
            )
        service = self.service
        if endpoint == "/v1/chat/completions":
            chat = await service.chat(ChatCompletionRequest.model_validate(body), ctx)
            return _whole(chat)
        if endpoint == "/v1/completions":
            completion = await service.completion(CompletionRequest.model_validate(body), ctx)
            return _whole(completion)
        if endpoint == "/v1/embeddings":
            return (await service.embeddings(EmbeddingRequest.model_validate(body), ctx)).body
        raise InvalidRequestError(f"Batches cannot run {endpoint}.", param="url")


def _whole(answer: Any) -> BaseModel:
    if isinstance(answer, StreamAnswer):  # never: stream was refused above
        raise ServerError(INTERNAL_ERROR_MESSAGE)
    body: BaseModel = answer.body
    return body


def _error(error: KakehashiError) -> Reply:
    return Reply(error.status_code, error.to_dict(), _retry_after(error))
