"""What the routes call: resolve the model, check gateway-level limits, call the backend."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from kakehashi.backends.base import ServedModel
from kakehashi.errors import InvalidRequestError
from kakehashi.gateway.catalog import Catalog
from kakehashi.wire.chat import ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse
from kakehashi.wire.completions import CompletionRequest, CompletionResponse
from kakehashi.wire.models import ModelCard, ModelList


class GatewayService:
    """The operations of the OpenAI API, independent of HTTP."""

    def __init__(self, catalog: Catalog, *, max_n: int) -> None:
        self.catalog = catalog
        self.max_n = max_n

    async def start(self) -> None:
        """Start every backend (stopping those already started if one fails)."""
        async with contextlib.AsyncExitStack() as stack:
            for backend in self.catalog.backends():
                await backend.start()
                stack.push_async_callback(backend.stop)
            stack.pop_all()

    async def stop(self) -> None:
        """Stop every backend."""
        for backend in reversed(self.catalog.backends()):
            await backend.stop()

    def list_models(self) -> ModelList:
        """``GET /v1/models``."""
        return ModelList(data=[_card(entry.model) for entry in self.catalog.entries()])

    def get_model(self, model_id: str) -> ModelCard:
        """``GET /v1/models/{model}``."""
        return _card(self.catalog.resolve(model_id).model)

    async def chat_completion(self, request: ChatCompletionRequest) -> ChatCompletionResponse:
        """A whole chat completion."""
        self._check_n(request.n)
        return await self.catalog.resolve(request.model).backend.chat_completion(request)

    def stream_chat_completion(
        self, request: ChatCompletionRequest
    ) -> AsyncIterator[ChatCompletionChunk]:
        """A chat completion as stream chunks; request errors raise before any chunk."""
        self._check_n(request.n)
        return self.catalog.resolve(request.model).backend.stream_chat_completion(request)

    async def completion(self, request: CompletionRequest) -> CompletionResponse:
        """A whole legacy completion."""
        self._check_n(request.n)
        return await self.catalog.resolve(request.model).backend.completion(request)

    def stream_completion(self, request: CompletionRequest) -> AsyncIterator[CompletionResponse]:
        """A legacy completion as stream chunks; request errors raise before any chunk."""
        self._check_n(request.n)
        return self.catalog.resolve(request.model).backend.stream_completion(request)

    def _check_n(self, n: int | None) -> None:
        if n is not None and n > self.max_n:
            raise InvalidRequestError(
                f"Invalid 'n': integer above maximum value. Expected a value <= {self.max_n}, "
                f"but got {n} instead.",
                param="n",
                code="integer_above_max_value",
            )


def _card(model: ServedModel) -> ModelCard:
    return ModelCard(id=model.id, created=model.created, owned_by=model.owned_by)
