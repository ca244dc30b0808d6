"""The seam between the gateway and whatever produces completions."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from kakehashi.errors import ServiceUnavailableError
from kakehashi.wire.chat import ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse
from kakehashi.wire.completions import CompletionRequest, CompletionResponse
from kakehashi.wire.embeddings import EmbeddingRequest, EmbeddingResponse
from kakehashi.wire.tokenize import TokenizeRequest

GENERATIVE = frozenset({"chat", "completions", "edits"})
"""What a language model backend can do (edits are answered by a chat completion)."""
EMBEDDING = frozenset({"embeddings"})


@dataclass(frozen=True, slots=True)
class ServedModel:
    """A public model id a backend answers to, and the endpoints it serves."""

    id: str
    created: int
    owned_by: str = "kakehashi"
    capabilities: frozenset[str] = GENERATIVE
    context_window: int | None = None


def served_as(
    model_ids: Iterable[str], *, owned_by: str, capabilities: frozenset[str] = GENERATIVE
) -> list[ServedModel]:
    """One :class:`ServedModel` per distinct id, in order, all created now."""
    created = int(time.time())
    return [
        ServedModel(m, created, owned_by, capabilities=capabilities)
        for m in dict.fromkeys(model_ids)
    ]


def not_loaded() -> ServiceUnavailableError:
    """The 503 a backend raises when asked to serve before :meth:`AnyBackend.start`."""
    return ServiceUnavailableError("The model is not loaded yet; try again shortly.")


class AnyBackend(Protocol):
    """What every backend has: the ids it serves, start and stop."""

    def served_models(self) -> Sequence[ServedModel]:
        """The public model ids this backend serves."""
        ...

    async def start(self) -> None:
        """Load what is needed to serve; called once before the first request."""
        ...

    async def stop(self) -> None:
        """Release resources; in-flight requests are aborted."""
        ...


class EmbeddingBackend(AnyBackend, Protocol):
    """A backend of embedding models. Requests arrive validated, with ``request.model`` the
    name the response carries."""

    async def embeddings(self, request: EmbeddingRequest) -> EmbeddingResponse:
        """Embed every input of ``request`` (token limits are checked here)."""
        ...


class Backend(Protocol):
    """What the gateway calls. Requests arrive validated; ``request.model`` is the public id the
    client asked for and is echoed in responses. Errors are raised as ``KakehashiError``.

    The streaming methods are async generators: validation errors surface on the first
    ``__anext__``, and closing the generator cancels the work behind it.
    """

    def served_models(self) -> Sequence[ServedModel]:
        """The public model ids this backend serves."""
        ...

    async def start(self) -> None:
        """Load what is needed to serve; called once before the first request."""
        ...

    async def stop(self) -> None:
        """Release resources; in-flight requests are aborted."""
        ...

    async def chat_completion(self, request: ChatCompletionRequest) -> ChatCompletionResponse:
        """A whole chat completion."""
        ...

    def stream_chat_completion(
        self, request: ChatCompletionRequest
    ) -> AsyncIterator[ChatCompletionChunk]:
        """A chat completion as stream chunks (without the final ``[DONE]``)."""
        ...

    async def completion(self, request: CompletionRequest) -> CompletionResponse:
        """A whole legacy completion."""
        ...

    def stream_completion(self, request: CompletionRequest) -> AsyncIterator[CompletionResponse]:
        """A legacy completion as stream chunks (without the final ``[DONE]``)."""
        ...


@runtime_checkable
class TokenizingBackend(Protocol):
    """A backend that holds its model's tokenizer and so counts tokens exactly (an upstream
    that cannot is answered with an estimate by the gateway)."""

    @property
    def context_window(self) -> int | None:
        """The model's context window in tokens, once known."""
        ...

    def tokenize(self, request: TokenizeRequest) -> list[int]:
        """The token ids of the request's prompt, or of its messages as the chat endpoint
        renders them."""
        ...

    def detokenize(self, tokens: Sequence[int]) -> str:
        """The text of ``tokens``; raises 400 for ids outside the vocabulary."""
        ...
