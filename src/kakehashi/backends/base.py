"""The seam between the gateway and whatever produces completions: one :class:`Backend`
protocol for the local engine, the local embedding model and upstream providers alike.

Each call gets a :class:`Call`: the attempt's deadline, and a place for the backend to note what
the gateway should know besides the answer (parameters it dropped, the tokens used so far).
Streams are async generators of wire chunks that always end, when they end normally, with one
:class:`StreamUsage`: the usage of the whole stream, which the gateway records and forwards to
the client only if the client asked for it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from kakehashi.capabilities import EMBEDDING, GENERATIVE, Capability
from kakehashi.errors import InvalidRequestError, ServiceUnavailableError
from kakehashi.wire.chat import ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse
from kakehashi.wire.common import Usage
from kakehashi.wire.completions import CompletionRequest, CompletionResponse
from kakehashi.wire.embeddings import EmbeddingRequest, EmbeddingResponse
from kakehashi.wire.tokenize import TokenizeRequest

__all__ = [
    "EMBEDDING",
    "GENERATIVE",
    "Backend",
    "Call",
    "Capability",
    "ChatStream",
    "CompletionStream",
    "ServedModel",
    "StreamUsage",
    "TokenizingBackend",
    "not_loaded",
    "served_as",
    "unsupported",
]


@dataclass(frozen=True, slots=True)
class ServedModel:
    """A public model id a backend answers to, and the endpoints it serves."""

    id: str
    created: int
    owned_by: str = "kakehashi"
    capabilities: frozenset[Capability] = GENERATIVE
    context_window: int | None = None


def served_as(
    model_ids: Iterable[str], *, owned_by: str, capabilities: frozenset[Capability] = GENERATIVE
) -> list[ServedModel]:
    """One :class:`ServedModel` per distinct id, in order, all created now."""
    created = int(time.time())
    return [
        ServedModel(m, created, owned_by, capabilities=capabilities)
        for m in dict.fromkeys(model_ids)
    ]


def not_loaded() -> ServiceUnavailableError:
    """The 503 a backend raises when asked to serve before :meth:`Backend.start`."""
    return ServiceUnavailableError("The model is not loaded yet; try again shortly.")


def unsupported(capability: Capability, model: str) -> InvalidRequestError:
    """The 400 of a backend asked for something its models cannot do."""
    return InvalidRequestError(
        f"The model `{model}` does not support the v1/{capability.value} endpoint.", param="model"
    )


@dataclass(frozen=True, slots=True)
class StreamUsage:
    """The last item of every stream that ends normally: what the whole request used."""

    usage: Usage


ChatStream = AsyncGenerator[ChatCompletionChunk | StreamUsage, None]
"""A streamed chat completion: chunks (without ``usage``), then one :class:`StreamUsage`."""
CompletionStream = AsyncGenerator[CompletionResponse | StreamUsage, None]
"""A streamed legacy completion: chunks (without ``usage``), then one :class:`StreamUsage`."""


@dataclass(slots=True)
class Call:
    """One attempt of one request at one backend.

    ``model`` is the id the backend knows the model by (an upstream's own id), while the request
    carries the public id that responses echo. ``deadline`` is a ``time.monotonic()`` instant.
    Backends fill in ``dropped_params`` (parameters they left out on the route's say-so) and,
    as they learn them, ``prompt_tokens`` and ``completion_tokens`` (what a stream the client
    abandons is charged). ``priority`` orders work on a local engine: lower first (interactive
    requests 0, batch lines 1).
    """

    model: str
    deadline: float | None = None
    request_id: str = ""
    priority: int = 0
    dropped_params: list[str] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int = 0

    def remaining(self) -> float | None:
        """Seconds left before the deadline (None: no deadline)."""
        return None if self.deadline is None else self.deadline - time.monotonic()


class Backend(Protocol):
    """What the gateway calls. Requests arrive validated, with ``request.model`` the public id
    the response should echo; errors are raised as ``KakehashiError``.

    The streaming methods are async generators: errors of the request surface on the first
    ``__anext__``, and closing the generator cancels the work behind it.
    """

    @property
    def name(self) -> str:
        """How logs, headers and usage records name this backend."""
        ...

    def served_models(self) -> Sequence[ServedModel]:
        """The model ids this backend serves by itself (upstreams may serve more by glob)."""
        ...

    async def start(self) -> None:
        """Load or connect what is needed to serve; called once before the first request."""
        ...

    async def stop(self) -> None:
        """Release resources; in-flight requests are aborted."""
        ...

    async def chat(self, request: ChatCompletionRequest, call: Call) -> ChatCompletionResponse:
        """A whole chat completion, with its usage."""
        ...

    def stream_chat(self, request: ChatCompletionRequest, call: Call) -> ChatStream:
        """A chat completion as stream chunks (without the final ``[DONE]``)."""
        ...

    async def completion(self, request: CompletionRequest, call: Call) -> CompletionResponse:
        """A whole legacy completion, with its usage."""
        ...

    def stream_completion(self, request: CompletionRequest, call: Call) -> CompletionStream:
        """A legacy completion as stream chunks (without the final ``[DONE]``)."""
        ...

    async def embeddings(self, request: EmbeddingRequest, call: Call) -> EmbeddingResponse:
        """Embed every input of ``request``."""
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
