"""What the routes call: resolve the model for the caller and the day, check gateway-level
limits, call the backend.

Every operation takes a :class:`Route`, made by :meth:`GatewayService.route` from the requested
id, the endpoint's capability and the caller: it names the catalog entry, the model id the
response carries and the response headers (``Deprecation``/``Sunset``/``Link``) to send.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TypeVar, cast

from kakehashi.backends.base import Backend, EmbeddingBackend
from kakehashi.errors import InvalidRequestError, NotFoundError
from kakehashi.gateway.access import ANONYMOUS, Caller
from kakehashi.gateway.catalog import Catalog, CatalogEntry
from kakehashi.gateway.lifecycle import ENDPOINT_DEPRECATIONS, Clock, Status, system_clock
from kakehashi.gateway.tokens import ModelTokens, context_window
from kakehashi.wire.base import RequestModel
from kakehashi.wire.chat import ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse
from kakehashi.wire.completions import CompletionRequest, CompletionResponse
from kakehashi.wire.edits import EditChoice, EditRequest, EditResponse
from kakehashi.wire.embeddings import EmbeddingRequest, EmbeddingResponse
from kakehashi.wire.models import ModelCard, ModelList

logger = logging.getLogger(__name__)

R = TypeVar("R", bound=RequestModel)

EDIT_SYSTEM_PROMPT = (
    "You are a precise text editor. Apply the instruction to the text and reply with the "
    "edited text only: no explanations, no quotes, no preamble."
)

# What OpenAI answers when a model is used on the wrong endpoint.
_WRONG_ENDPOINT = {
    "chat": "This is not a chat model and thus not supported in the v1/chat/completions "
    "endpoint. Did you mean to use v1/completions?",
    "completions": "This is a chat model and not supported in the v1/completions endpoint. "
    "Did you mean to use v1/chat/completions?",
}


@dataclass(frozen=True, slots=True)
class Route:
    """Where one request goes: the entry, the model id responses carry, extra headers."""

    entry: CatalogEntry
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def model(self) -> str:
        """The id in the response: the entry's (a stable alias answers as its snapshot)."""
        return self.entry.id


class GatewayService:
    """The operations of the OpenAI API, independent of HTTP."""

    def __init__(self, catalog: Catalog, *, max_n: int, clock: Clock = system_clock) -> None:
        self.catalog = catalog
        self.max_n = max_n
        self.clock = clock
        self._warned: set[tuple[str, str]] = set()

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

    # -- routing ---------------------------------------------------------------------------

    def route(self, model_id: str, capability: str, caller: Caller = ANONYMOUS) -> Route:
        """Resolve ``model_id`` for ``caller`` today and check it can do ``capability``.

        Raises 404 ``model_not_found`` for unknown, inaccessible and retired models, and the
        404 OpenAI gives for a model used on the wrong endpoint.
        """
        today = self.clock()
        entry = self.catalog.resolve(model_id, caller=caller, today=today)
        if capability not in entry.capabilities:
            message = _WRONG_ENDPOINT.get(
                capability,
                f"The model `{model_id}` does not support the v1/{capability} endpoint.",
            )
            raise NotFoundError(message, param="model")
        headers = self.endpoint_headers(capability)
        headers.update(entry.lifecycle.headers(today))
        if entry.status(today) is Status.DEPRECATED:
            self._warn_once(caller, entry)
        return Route(entry, headers)

    def endpoint_headers(self, capability: str) -> dict[str, str]:
        """``Deprecation`` headers of a deprecated endpoint (``edits``), else none."""
        endpoint = ENDPOINT_DEPRECATIONS.get(capability)
        return endpoint.headers(self.clock()) if endpoint is not None else {}

    def _warn_once(self, caller: Caller, entry: CatalogEntry) -> None:
        if (caller.label, entry.id) in self._warned:
            return
        self._warned.add((caller.label, entry.id))
        logger.warning(
            "key %s uses `%s`, which is %s",
            caller.label,
            entry.id,
            entry.lifecycle.describe(self.clock()),
        )

    def _resolved(self, request: R, capability: str, route: Route | None) -> tuple[R, Route]:
        """``request`` addressed to the route's model (made anonymously if not given)."""
        route = route or self.route(request.model, capability)  # type: ignore[attr-defined]
        if request.model != route.model:  # type: ignore[attr-defined]
            request = request.model_copy(update={"model": route.model})
        return request, route

    # -- models ----------------------------------------------------------------------------

    def list_models(self, caller: Caller = ANONYMOUS) -> ModelList:
        """``GET /v1/models``: what ``caller`` may use and is not retired."""
        today = self.clock()
        ids = self.catalog.visible(caller=caller, today=today)
        return ModelList(data=[self._card(i, caller) for i in ids])

    def get_model(self, model_id: str, caller: Caller = ANONYMOUS) -> ModelCard:
        """``GET /v1/models/{model}``, or 404 exactly as for an unknown model."""
        return self._card(model_id, caller)

    def _card(self, model_id: str, caller: Caller) -> ModelCard:
        today = self.clock()
        entry = self.catalog.resolve(model_id, caller=caller, today=today)
        shutdown = entry.lifecycle.shutdown_on
        card = ModelCard(id=model_id, created=entry.created, owned_by=entry.owned_by)
        window = context_window(entry)
        if window is not None:
            card.context_window = card.max_model_len = window
        if shutdown is not None and entry.status(today) is Status.DEPRECATED:
            card.shutdown_date = shutdown.isoformat()
        return card

    def tokens(self, model_id: str, caller: Caller = ANONYMOUS) -> ModelTokens:
        """``/tokenize`` and ``/detokenize`` for ``model_id`` as ``caller`` may use it today."""
        return ModelTokens(self.catalog.resolve(model_id, caller=caller, today=self.clock()))

    # -- chat and completions ----------------------------------------------------------------

    async def chat_completion(
        self, request: ChatCompletionRequest, route: Route | None = None
    ) -> ChatCompletionResponse:
        """A whole chat completion."""
        self._check_n(request.n)
        request, route = self._resolved(request, "chat", route)
        return await _generative(route).chat_completion(request)

    def stream_chat_completion(
        self, request: ChatCompletionRequest, route: Route | None = None
    ) -> AsyncIterator[ChatCompletionChunk]:
        """A chat completion as stream chunks; request errors raise before any chunk."""
        self._check_n(request.n)
        request, route = self._resolved(request, "chat", route)
        return _generative(route).stream_chat_completion(request)

    async def completion(
        self, request: CompletionRequest, route: Route | None = None
    ) -> CompletionResponse:
        """A whole legacy completion."""
        self._check_n(request.n)
        request, route = self._resolved(request, "completions", route)
        return await _generative(route).completion(request)

    def stream_completion(
        self, request: CompletionRequest, route: Route | None = None
    ) -> AsyncIterator[CompletionResponse]:
        """A legacy completion as stream chunks; request errors raise before any chunk."""
        self._check_n(request.n)
        request, route = self._resolved(request, "completions", route)
        return _generative(route).stream_completion(request)

    # -- embeddings and edits ---------------------------------------------------------------

    async def embeddings(
        self, request: EmbeddingRequest, route: Route | None = None
    ) -> EmbeddingResponse:
        """Embed the request's inputs; ``dimensions`` only where the entry allows it."""
        request, route = self._resolved(request, "embeddings", route)
        if request.dimensions is not None and not route.entry.dimensions:
            raise InvalidRequestError(
                f"This model does not support specifying dimensions: `{route.model}` always "
                "returns its full vector.",
                param="dimensions",
            )
        return await cast(EmbeddingBackend, route.entry.backend).embeddings(request)

    async def edit(self, request: EditRequest, route: Route | None = None) -> EditResponse:
        """An edit, answered by a chat completion with an instruction-following prompt."""
        self._check_n(request.n)
        request, route = self._resolved(request, "edits", route)
        text = request.input or ""
        chat = ChatCompletionRequest.model_validate(
            {
                "model": route.model,
                "messages": [
                    {"role": "system", "content": EDIT_SYSTEM_PROMPT},
                    {
                        "role": "user",
                        "content": f"Instruction: {request.instruction}\n\nText:\n{text}",
                    },
                ],
                "n": request.n,
                "temperature": request.temperature,
                "top_p": request.top_p,
            }
        )
        response = await _generative(route).chat_completion(chat)
        return EditResponse(
            created=response.created,
            choices=[
                EditChoice(
                    text=choice.message.content or "",
                    index=choice.index,
                    finish_reason="length" if choice.finish_reason == "length" else "stop",
                )
                for choice in response.choices
            ],
            usage=response.usage,
        )

    def _check_n(self, n: int | None) -> None:
        if n is not None and n > self.max_n:
            raise InvalidRequestError(
                f"Invalid 'n': integer above maximum value. Expected a value <= {self.max_n}, "
                f"but got {n} instead.",
                param="n",
                code="integer_above_max_value",
            )


def _generative(route: Route) -> Backend:
    return cast(Backend, route.entry.backend)
